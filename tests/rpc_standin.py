"""A GPU stand-in for machines without one: llama.cpp's RPC backend, built from the pinned sdist, on loopback.

The RPC device is a GPU to llama.cpp (device type GPU, layers are offloaded to it) and its buffers are not host
memory, as with CUDA: what GPU hybrid mode must get right (placement, device crossings) is exercised; its server
computes with the CPU backend of llama-cpp-python's own ggml.

Build: ggml/src/ggml-rpc/{ggml-rpc,transport}.cpp into libggml-rpc.so linked against the installed
libggml-base.so.0, and tools/rpc/rpc-server.cpp against libggml.so.0 (both by soname, from llama_cpp's lib
directory), with GGML_BACKEND_DL so that the server finds the library beside it (ggml_backend_load_all). About 8 s
of g++ on 2 cores, cached under the test cache keyed by the sources, compiler flags and ggml libraries. The
sources come from the sdist (FLASHMOE_LLAMA_CPP_SRC, or the sdist the tests already download), never from this
repository.

In the test process: `register(endpoint)` (flashmoe_gguf/rpc.py) loads the library, asks the server for its
devices (ggml_backend_rpc_add_server) and adds them to the registry libllama uses (ggml_backend_register), as
llama.cpp's `--rpc` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from flashmoe_gguf.ggml_lib import llama_cpp_lib_dir
from flashmoe_gguf.sdist import LLAMA_CPP_PYTHON_VERSION, download_sdist

SOURCES = ("ggml/src/ggml-rpc/ggml-rpc.cpp", "ggml/src/ggml-rpc/transport.cpp", "tools/rpc/rpc-server.cpp")
_NEEDED = (r"ggml/include/", r"ggml/src/ggml-rpc/", r"ggml/src/ggml-impl.h", r"ggml/src/ggml-backend-impl.h",
           r"ggml/src/ggml-common.h", r"tools/rpc/rpc-server.cpp")
DEFINES = ["-DGGML_BACKEND_DL", "-DGGML_BACKEND_SHARED", "-DGGML_BACKEND_BUILD", "-DGGML_SHARED", "-DGGML_BUILD"]


@dataclass(frozen=True)
class RpcBuild:
    lib: Path           # libggml-rpc.so
    server: Path        # rpc-server (finds libggml-rpc.so beside it)
    seconds: float      # build time (0.0 when cached)


def _source(cache: Path) -> Path:
    """A llama.cpp tree with what the build needs: FLASHMOE_LLAMA_CPP_SRC, or extracted from the pinned sdist."""
    env = os.environ.get("FLASHMOE_LLAMA_CPP_SRC")
    if env and all((Path(env) / s).exists() for s in SOURCES):
        return Path(env)
    out = cache / f"llama-cpp-rpc-src-{LLAMA_CPP_PYTHON_VERSION}"
    if all((out / s).exists() for s in SOURCES):
        return out
    archive = download_sdist(cache / "sdist-archive")
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
    staging = out.with_name(out.name + f".partial-{os.getpid()}")
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            rel = m.name[len(prefix):] if m.name.startswith(prefix) else None
            if m.isfile() and rel and rel.startswith(_NEEDED):
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                target.write_bytes(src.read())
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    return out


def _compile(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({r.returncode}):\n{r.stderr[-3000:]}")


def build(cache: Path) -> RpcBuild:
    """libggml-rpc.so and rpc-server, built once per source/flags/ggml and cached under `cache`."""
    src = _source(cache)
    libs = llama_cpp_lib_dir()
    cxx = os.environ.get("CXX", "g++")
    h = hashlib.sha1(" ".join([cxx, *DEFINES]).encode())
    for p in [*(src / s for s in SOURCES), libs / "libggml-base.so.0", libs / "libggml.so.0"]:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    out = cache / f"rpc-standin-{h.hexdigest()[:12]}"
    lib, server = out / "libggml-rpc.so", out / "rpc-server"
    if lib.exists() and server.exists():
        return RpcBuild(lib, server, 0.0)
    staging = out.with_name(out.name + f".partial-{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    inc = [f"-I{src / 'ggml' / 'include'}", f"-I{src / 'ggml' / 'src'}"]
    common = [cxx, "-std=c++17", "-O2", "-fPIC", *DEFINES, *inc]
    t0 = time.perf_counter()
    _compile([*common, "-shared", str(src / SOURCES[0]), str(src / SOURCES[1]), "-o", str(staging / lib.name),
              str(libs / "libggml-base.so.0"), f"-Wl,-rpath,{libs}"])
    _compile([*common, str(src / SOURCES[2]), "-o", str(staging / server.name), str(libs / "libggml.so.0"),
              str(libs / "libggml-base.so.0"), f"-Wl,-rpath,{libs}"])
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    return RpcBuild(lib, server, seconds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(b: RpcBuild, threads: int = 1) -> Iterator[str]:
    """An rpc-server on loopback (its CPU device, `threads` threads); yields its endpoint, stops it at the end."""
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    proc = subprocess.Popen([str(b.server), "-H", "127.0.0.1", "-p", str(port), "-t", str(threads)],
                            cwd=b.server.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"rpc-server exited ({proc.returncode}): "
                                   f"{proc.stderr.read().decode(errors='replace') if proc.stderr else ''}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("rpc-server did not listen within 30 s")
            time.sleep(0.05)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def register(b: RpcBuild, endpoint: str) -> str:
    """Adds the server's devices to this process's ggml registry (flashmoe_gguf.rpc.connect); returns the GPU
    device's buffer type name, e.g. "RPC0[127.0.0.1:50052]"."""
    from flashmoe_gguf.rpc import connect
    return connect(str(b.lib), endpoint)
