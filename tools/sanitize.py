"""Run the runtime tests on a build of the ggml extension instrumented with AddressSanitizer and
UndefinedBehaviorSanitizer.

    python tools/sanitize.py                       # tests/test_runtime.py and tests/test_runtime_faults.py
    python tools/sanitize.py tests/test_runtime.py -k qwen3_moe   # any pytest arguments

Builds ggml_ext/ with -fsanitize=address,undefined (every UB report fatal) into build/sanitize/, then runs
pytest with that build in place of the installed extension (tests/conftest.py: FLASHMOE_TEST_FMEXT) and the
ASan runtime preloaded into the (uninstrumented) Python process. Heap memory ASan hands out is filled with
0xa5 bytes, so anything that read uninitialised memory would compute with garbage, and the tests compare every
logit with stock bit for bit. Leak detection is off: the interpreter and llama.cpp keep memory until exit.
Tests that start their own Python subprocess run those on the installed extension. Exit status: pytest's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g")


def build() -> Path:
    sys.path.insert(0, str(REPO / "ggml_ext"))
    from build_ffi import make_ffi  # noqa: E402
    return Path(make_ffi(relative=False, extra_flags=SANITIZE).compile(tmpdir=str(REPO / "build" / "sanitize")))


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
    env["LD_PRELOAD"] = runtime_library("libasan.so")
    env["ASAN_OPTIONS"] = ("detect_leaks=0:abort_on_error=1:malloc_fill_byte=165:max_malloc_fill_size=1073741824:"
                           "allocator_may_return_null=1:" + env.get("ASAN_OPTIONS", ""))
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:" + env.get("UBSAN_OPTIONS", "")
    args = argv or ["tests/test_runtime.py", "tests/test_runtime_faults.py"]
    print(f"sanitize: {so}", flush=True)
    return subprocess.call([sys.executable, "-m", "pytest", *args], cwd=REPO, env=env)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
