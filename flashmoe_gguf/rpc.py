"""llama.cpp's RPC backend as a GPU stand-in: connect this process to an rpc-server, as llama.cpp's `--rpc` does.

The RPC device is a GPU to llama.cpp (layers are offloaded to it, its buffers are not host memory), so GPU hybrid
mode runs on a machine without a GPU (tests/rpc_standin.py builds the library and the server from the pinned
sdist). `FLASHMOE_RPC=LIB@HOST:PORT` makes `flashmoe bench`'s workers and tools/gpu_parity.py connect before
loading (LIB: a libggml-rpc.so built against llama-cpp-python's ggml).
"""

from __future__ import annotations

import ctypes
import os

ENV = "FLASHMOE_RPC"


def connect(lib_path: str, endpoint: str) -> str:
    """Adds the server's devices to this process's ggml registry (once per endpoint); returns the first GPU
    device's buffer type name, e.g. "RPC0[127.0.0.1:50052]"."""
    from . import ggml_devices
    lib = ctypes.CDLL(lib_path)
    lib.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    lib.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    mine = [d for d in ggml_devices.devices() if d.buft_name.endswith(f"[{endpoint}]")]
    if not mine:
        reg = lib.ggml_backend_rpc_add_server(endpoint.encode())
        if not reg:
            raise RuntimeError(f"no RPC devices at {endpoint}")
        ggml_devices.register_backend(reg)
        mine = [d for d in ggml_devices.devices() if d.buft_name.endswith(f"[{endpoint}]")]
    gpu = [d for d in mine if d.kind == "GPU"]
    if not gpu:
        raise RuntimeError(f"the RPC server at {endpoint} registered no GPU device")
    return gpu[0].buft_name


def connect_from_env() -> str | None:
    """connect() for FLASHMOE_RPC=LIB@HOST:PORT, if set; the device's buffer type name."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    lib, sep, endpoint = spec.rpartition("@")
    if not sep or not lib or not endpoint:
        raise ValueError(f"{ENV}={spec!r}: expected /path/to/libggml-rpc.so@HOST:PORT")
    return connect(lib, endpoint)
