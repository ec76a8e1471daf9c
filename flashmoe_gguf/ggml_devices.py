"""The ggml devices and buffer types of the process's ggml registry (the one libllama uses), through ctypes.

Opened by soname from llama-cpp-python's lib directory (`libggml.so.0`, `libggml-base.so.0`: the files libllama
links; the unversioned `libggml.so` is a second copy with a second, unused registry; see
shared/notes/llama-cpp-integration.md). llama_cpp is imported first so that they are already loaded.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

from .ggml_lib import llama_cpp_lib_dir

# enum ggml_backend_dev_type (ggml/include/ggml-backend.h)
DEVICE_TYPES = ("CPU", "GPU", "IGPU", "ACCEL", "META")


@dataclass(frozen=True)
class Device:
    name: str
    kind: str           # one of DEVICE_TYPES
    buft: int           # its default buffer type (ggml_backend_buffer_type_t), 0 if none
    buft_name: str


class _Libs:
    def __init__(self) -> None:
        import llama_cpp  # noqa: F401  (loads libllama and the ggml libraries it links)
        lib_dir = llama_cpp_lib_dir()
        self.reg = ctypes.CDLL(str(lib_dir / "libggml.so.0"))
        self.base = ctypes.CDLL(str(lib_dir / "libggml-base.so.0"))
        vp = ctypes.c_void_p
        self.reg.ggml_backend_dev_count.restype = ctypes.c_size_t
        self.reg.ggml_backend_dev_count.argtypes = []
        self.reg.ggml_backend_dev_get.restype = vp
        self.reg.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        self.reg.ggml_backend_register.restype = None
        self.reg.ggml_backend_register.argtypes = [vp]
        self.base.ggml_backend_dev_name.restype = ctypes.c_char_p
        self.base.ggml_backend_dev_name.argtypes = [vp]
        self.base.ggml_backend_dev_type.restype = ctypes.c_int
        self.base.ggml_backend_dev_type.argtypes = [vp]
        self.base.ggml_backend_dev_buffer_type.restype = vp
        self.base.ggml_backend_dev_buffer_type.argtypes = [vp]
        self.base.ggml_backend_buft_name.restype = ctypes.c_char_p
        self.base.ggml_backend_buft_name.argtypes = [vp]
        self.base.ggml_backend_cpu_buffer_type.restype = vp
        self.base.ggml_backend_cpu_buffer_type.argtypes = []
        self.base.ggml_backend_dev_init.restype = vp
        self.base.ggml_backend_dev_init.argtypes = [vp, ctypes.c_char_p]
        self.base.ggml_backend_free.restype = None
        self.base.ggml_backend_free.argtypes = [vp]


@functools.lru_cache(maxsize=1)
def libs() -> _Libs:
    return _Libs()


def devices() -> list[Device]:
    """Every device in the registry now, in registry order."""
    lib = libs()
    out = []
    for i in range(lib.reg.ggml_backend_dev_count()):
        dev = lib.reg.ggml_backend_dev_get(i)
        kind = lib.base.ggml_backend_dev_type(dev)
        buft = lib.base.ggml_backend_dev_buffer_type(dev) or 0
        out.append(Device(lib.base.ggml_backend_dev_name(dev).decode(errors="replace"),
                          DEVICE_TYPES[kind] if 0 <= kind < len(DEVICE_TYPES) else str(kind), int(buft),
                          lib.base.ggml_backend_buft_name(buft).decode(errors="replace") if buft else ""))
    return out


def has_gpu() -> bool:
    """Whether a device llama.cpp offloads layers to (GPU or integrated GPU) is registered."""
    return any(d.kind in ("GPU", "IGPU") for d in devices())


def open_gpu_devices() -> list[str]:
    """Start a backend on every GPU device and free it again; the names of those started. What a GPU runtime maps
    into the process when a device is first opened (the CUDA context: hundreds of MB of host memory) stays for the
    process's lifetime, so memory measured after this call no longer counts it (the bench's RSS baseline)."""
    lib = libs()
    opened = []
    for i in range(lib.reg.ggml_backend_dev_count()):
        dev = lib.reg.ggml_backend_dev_get(i)
        kind = lib.base.ggml_backend_dev_type(dev)
        if not 0 <= kind < len(DEVICE_TYPES) or DEVICE_TYPES[kind] not in ("GPU", "IGPU"):
            continue
        name = lib.base.ggml_backend_dev_name(dev).decode(errors="replace")
        backend = lib.base.ggml_backend_dev_init(dev, None)
        if not backend:
            raise RuntimeError(f"ggml could not start a backend on the device {name}")
        lib.base.ggml_backend_free(backend)
        opened.append(name)
    return opened


def cpu_buffer_type() -> int:
    return int(libs().base.ggml_backend_cpu_buffer_type())


def buffer_types() -> dict[str, int]:
    """Buffer type name -> ggml_backend_buffer_type_t, as llama.cpp's `--override-tensor` names them (each
    device's default buffer type: "CPU", "CUDA0", "RPC0[127.0.0.1:50052]", ...)."""
    out = {d.buft_name: d.buft for d in devices() if d.buft}
    out["CPU"] = cpu_buffer_type()
    return out


def register_backend(reg: int) -> None:
    """ggml_backend_register(reg): add a backend registry (and its devices) to the process's registry."""
    libs().reg.ggml_backend_register(ctypes.c_void_p(reg))
