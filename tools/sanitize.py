"""Run the runtime tests on a build of the ggml extension instrumented with AddressSanitizer and
UndefinedBehaviorSanitizer.

    python tools/sanitize.py                       # tests/test_runtime.py and tests/test_runtime_faults.py
    python tools/sanitize.py tests/test_runtime.py -k qwen3_moe   # any pytest arguments

Builds ggml_ext/ with -fsanitize=address,undefined (every UB report fatal) into build/sanitize/, then runs
pytest with that build in place of the installed extension (tests/conftest.py: FLASHMOE_TEST_FMEXT) and the
ASan runtime preloaded into the (uninstrumented) Python process. Heap memory ASan hands out is filled with
0xa5 bytes, so anything that read uninitialised memory would compute with garbage, and the tests compare every
logit with stock bit for bit. Leak detection is off: the interpreter and llama.cpp keep memory until exit.
Subprocesses inherit the environment: those that import the tests' modules (conftest.py) load the instrumented
build too, CLI subprocesses (python -m flashmoe_gguf.cli) the installed extension under the ASan runtime. The C++
runtime is preloaded with ASan's (see main). Exit status: pytest's.

    python tools/sanitize.py tests/test_kernels.py                # the kernel tests
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g")


def build() -> Path:
    """the instrumented extension; rebuilt only when a source of it is newer or the flags changed (a build takes
    about 6 minutes on 2 cores)"""
    out = REPO / "build" / "sanitize"
    stamp = out / "flags.txt"
    built = sorted((out / "flashmoe_gguf").glob("_fmext*.so"))
    sources = [*(REPO / "ggml_ext").glob("*.[ch]"), REPO / "ggml_ext" / "build_ffi.py"]
    if (len(built) == 1 and stamp.exists() and stamp.read_text() == " ".join(SANITIZE)
            and built[0].stat().st_mtime > max(p.stat().st_mtime for p in sources)):
        return built[0]
    sys.path.insert(0, str(REPO / "ggml_ext"))
    from build_ffi import make_ffi  # noqa: E402
    so = Path(make_ffi(relative=False, extra_flags=SANITIZE).compile(tmpdir=str(out)))
    stamp.write_text(" ".join(SANITIZE))
    return so


def runtime_library(name: str) -> str:
    out = subprocess.run([os.environ.get("CC", "cc"), f"-print-file-name={name}"], capture_output=True, text=True,
                         check=True).stdout.strip()
    if not os.path.isabs(out):
        raise SystemExit(f"sanitize: the C compiler has no {name} (install its sanitizer runtime)")
    return out


def main(argv: list[str]) -> int:
    so = build()
    env = dict(os.environ)
    env["FLASHMOE_TEST_FMEXT"] = str(so)
    # the C++ runtime too: ASan's __cxa_throw interceptor binds the real one when ASan starts, and Python does not
    # link libstdc++ (llama.cpp brings it later), so without it the first C++ exception that llama.cpp throws (a
    # load that fails: a read error, a file changed underneath) aborts the process with "CHECK failed:
    # real___cxa_throw != 0" instead of failing the load
    env["LD_PRELOAD"] = ":".join([runtime_library("libasan.so"), runtime_library("libstdc++.so.6"),
                                  *filter(None, [env.get("LD_PRELOAD")])])
    env["ASAN_OPTIONS"] = ("detect_leaks=0:abort_on_error=1:malloc_fill_byte=165:max_malloc_fill_size=1073741824:"
                           "allocator_may_return_null=1:" + env.get("ASAN_OPTIONS", ""))
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:" + env.get("UBSAN_OPTIONS", "")
    args = argv or ["tests/test_runtime.py", "tests/test_runtime_faults.py"]
    print(f"sanitize: {so}", flush=True)
    return subprocess.call([sys.executable, "-m", "pytest", *args], cwd=REPO, env=env)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
