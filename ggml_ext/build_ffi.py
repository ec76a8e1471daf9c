"""Builds the ggml extension (`flashmoe_gguf._fmext`) with cffi, against the exact ggml headers of the pinned
llama-cpp-python.

PyPI ships llama-cpp-python only as an sdist, and the installed package has no ggml headers, so the build takes
them from that sdist: FLASHMOE_LLAMA_CPP_SRC may point at an extracted `vendor/llama.cpp`; otherwise the sdist
is downloaded once (flashmoe_gguf/sdist.py: PyPI, sha256 checked, or pip) and the headers are extracted into
a cache.
Nothing of ggml is linked: at run time the extension resolves ggml's functions from the copy llama_cpp loaded.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
from pathlib import Path

from cffi import FFI

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
HERE = Path(__file__).resolve().parent
_PREFIX = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
_MEMBERS = re.compile(r"^ggml/include/[^/]+\.h$|^ggml/src/ggml-backend-impl\.h$|^ggml/CMakeLists\.txt$")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "flashmoe-gguf" / f"ggml-headers-{LLAMA_CPP_PYTHON_VERSION}"


def _download_sdist(dest: Path) -> Path:
    # shared with the package (flashmoe_gguf/sdist.py), loaded by path: the package is not installed yet
    spec = importlib.util.spec_from_file_location("_flashmoe_sdist", HERE.parent / "flashmoe_gguf" / "sdist.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return Path(mod.download_sdist(dest, LLAMA_CPP_PYTHON_VERSION))


def llama_cpp_source() -> Path:
    """A directory laid out like llama.cpp's tree, holding at least ggml's headers and CMakeLists.txt."""
    env = os.environ.get("FLASHMOE_LLAMA_CPP_SRC")
    if env:
        p = Path(env)
        if not (p / "ggml" / "include" / "ggml-backend.h").exists():
            raise RuntimeError(f"FLASHMOE_LLAMA_CPP_SRC={env} has no ggml/include/ggml-backend.h")
        return p
    cache = _cache_dir()
    if (cache / "ggml" / "src" / "ggml-backend-impl.h").exists():
        return cache
    with tempfile.TemporaryDirectory() as tmp:
        archive = _download_sdist(Path(tmp))
        staging = cache.with_name(cache.name + f".partial-{os.getpid()}")
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                if m.isfile() and m.name.startswith(_PREFIX) and _MEMBERS.match(m.name[len(_PREFIX):]):
                    target = staging / m.name[len(_PREFIX):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(m)
                    assert src is not None
                    target.write_bytes(src.read())
        if not (staging / "ggml" / "src" / "ggml-backend-impl.h").exists():
            raise RuntimeError("the llama-cpp-python sdist lacks ggml's headers")
        cache.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, cache)
    return cache


def ggml_version(src: Path) -> str:
    text = (src / "ggml" / "CMakeLists.txt").read_text()
    parts = [re.search(rf"set\(GGML_VERSION_{k}\s+(\d+)\)", text) for k in ("MAJOR", "MINOR", "PATCH")]
    if not all(parts):
        raise RuntimeError("cannot read GGML_VERSION from ggml/CMakeLists.txt")
    return ".".join(m.group(1) for m in parts if m)


def _cdef() -> str:
    """What Python sees: the extension's public headers, comments and preprocessor lines removed."""
    text = "".join((HERE / h).read_text() for h in ("fm_types.h", "fm_api.h", "fm_quant.h", "fm_strings.h"))
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def openmp_flags() -> list[str]:
    """-fopenmp when the C compiler accepts it (fm_pool.c then runs our threads in llama.cpp's OpenMP team).

    FLASHMOE_OPENMP=0 forces the pthread pool."""
    if os.environ.get("FLASHMOE_OPENMP") == "0":
        return []
    cc = shlex.split(os.environ.get("CC") or "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "omp.c"
        src.write_text("#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            r = subprocess.run([*cc, "-fopenmp", str(src), "-o", str(Path(tmp) / "omp")], capture_output=True)
        except OSError:
            return []
    return ["-fopenmp"] if r.returncode == 0 else []


SOURCES = ["fm_api.c", "fm_backend.c", "fm_ggml.c", "fm_ggml_mmid.c", "fm_matmul.c", "fm_pool.c", "fm_store.c",
           "fm_io.c", "fm_readahead.c", "fm_slots.c", "fm_policy.c", "fm_policy_lfu.c", "fm_policy_lru.c", "fm_policy_lrfu.c",
           "fm_policy_hazard.c", "fm_routing.c", "fm_kernels.c", "fm_kernels_avx2.c", "fm_kernels_avx512.c", "fm_quant.c",
           "fm_strings.c"]


def make_ffi(relative: bool = True, simde_include: str | None = None, extra_flags: tuple[str, ...] = ()) -> FFI:
    """The extension's cffi builder. Test builds: simde_include, a build whose AVX-512 kernels run on SIMDe's
    emulation of the intrinsics (SIMDe's headers there), so that a CPU without AVX-512 runs them end to end
    (it needs AVX2 and FMA, which SIMDe uses underneath: fused multiply-adds must stay fused); extra_flags,
    added to compiling and linking (tools/sanitize.py)."""
    src = llama_cpp_source()
    gen = Path(tempfile.gettempdir()) / f"flashmoe-build-{os.getpid()}"
    gen.mkdir(parents=True, exist_ok=True)
    (gen / "fm_build_info.h").write_text(
        "/* generated by ggml_ext/build_ffi.py */\n"
        f'#define FM_GGML_VERSION "{ggml_version(src)}"\n'
        f'#define FM_LLAMA_CPP_PYTHON_VERSION "{LLAMA_CPP_PYTHON_VERSION}"\n')
    # setuptools wants paths relative to the project; cffi's own compile() changes directory, so absolute
    omp = openmp_flags()
    simde = ["-mavx2", "-mfma", "-Wno-psabi"] if simde_include else []
    sources = [os.path.relpath(HERE / n) if relative else str(HERE / n) for n in SOURCES]
    ffi = FFI()
    ffi.cdef(_cdef())
    ffi.set_source(
        "flashmoe_gguf._fmext",
        "#include \"fm_api.h\"\n#include \"fm_quant.h\"\n#include \"fm_strings.h\"\n",
        sources=sources,
        include_dirs=[str(HERE), str(gen), str(src / "ggml" / "include"), str(src / "ggml" / "src"),
                      *([simde_include] if simde_include else [])],
        define_macros=[("FM_AVX512_SIMDE", "1")] if simde_include else [],
        extra_compile_args=["-std=gnu11", "-O3", "-ffp-contract=off", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-format-truncation", "-pthread",
                            "-fvisibility=hidden", *omp, *simde, *extra_flags],
        extra_link_args=["-pthread", *omp, *extra_flags],
        libraries=["dl", "m"],
    )
    return ffi


ffibuilder = make_ffi() if os.environ.get("FLASHMOE_SKIP_EXT") != "1" else FFI()

if __name__ == "__main__":
    make_ffi(relative=False).compile(tmpdir=str(HERE.parent / "build" / "ffi"), verbose=True)
