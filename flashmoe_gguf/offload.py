"""GPU layers next to streamed experts: the tensor buffer-type overrides that keep routed experts off the GPU.

llama.cpp places an offloaded layer's weights with the GPU's buffer types first (src/llama-model.cpp,
load_tensors): a GPU that computes MUL_MAT_ID would take the routed-expert tensors, whose bytes flashmoe never
reads, and the load would fail. An override of the routed-expert tensors to the CPU buffer type (llama.cpp's
`-ot exps=CPU`) is redirected to the CPU list of buffer types (src/llama-model-loader.cpp, the override loop),
where our ACCEL device comes first: the experts land on the flashmoe device, everything else goes where
n_gpu_layers sends it.

llama-cpp-python 0.3.36 declares `llama_model_params.tensor_buft_overrides` as a void pointer and never sets it.
The array (NULL-terminated `{pattern, buft}`) is built here; llama.cpp reads it only while the model loads, and
the caller keeps the `OverrideArray` alive at least that long.

User overrides are `(regex, buffer type name)` pairs, llama.cpp's `-ot REGEX=BUFT` (searched in tensor names, the
first match wins; names as llama.cpp lists them: "CPU", "CUDA0", "RPC0[127.0.0.1:50052]"). They come first, the
routed-expert entry last, so the user's entries decide the other tensors; one that would send a routed-expert
tensor anywhere but the CPU is refused before the load.
"""

from __future__ import annotations

import ctypes
import re
from typing import Sequence

from .experts import EXPERT_NAME
from .runtime_errors import FlashMoeError

TensorOverride = tuple[str, str]

# the routed-expert tensors, from the one definition (experts.py); std::regex (ECMAScript) reads it as Python does
EXPERT_PATTERN = EXPERT_NAME.pattern
# their biases (GPT-OSS), which llama.cpp's own `-ot exps=CPU` moves with them: the expert block's ADD_IDs then
# read them in host memory, next to the products, instead of sending the block back to the GPU for each bias
EXPERT_BIAS_PATTERN = EXPERT_PATTERN.replace(r"\.weight$", r"\.bias$")
# our own device's buffer type holds expert weights whose bytes are never stored: nothing else may go there
FLASHMOE_BUFT = "FLASHMOE"
# Python-only syntax that llama.cpp's std::regex (ECMAScript) rejects or reads differently
_NOT_ECMASCRIPT = re.compile(r"\(\?(?![:=!])|\\[AZz]|\(\?<[=!]")


class TensorOverrideError(FlashMoeError, ValueError):
    """A tensor override that is malformed, names an unknown buffer type, or would put experts on a GPU."""


class _Entry(ctypes.Structure):
    """struct llama_model_tensor_buft_override (include/llama.h)"""
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


class OverrideArray:
    """A NULL-terminated llama_model_tensor_buft_override array and the strings it points to."""

    def __init__(self, entries: Sequence[tuple[str, int]]) -> None:
        self._patterns = [p.encode() for p, _ in entries]
        self._array = (_Entry * (len(entries) + 1))()
        for i, ((_, buft), pat) in enumerate(zip(entries, self._patterns)):
            self._array[i].pattern = pat
            self._array[i].buft = buft
        self.entries = list(entries)

    @property
    def address(self) -> int:
        return ctypes.addressof(self._array)


def parse_overrides(text: str) -> list[TensorOverride]:
    """llama.cpp's `-ot` syntax: "REGEX=BUFT[,REGEX=BUFT...]"."""
    out = []
    for item in text.split(","):
        pattern, sep, buft = item.rpartition("=")
        if not sep or not pattern or not buft:
            raise TensorOverrideError(f"tensor override {item!r}: expected REGEX=BUFFER_TYPE (e.g. 'attn=CPU')")
        out.append((pattern, buft))
    return out


def check_overrides(entries: Sequence[TensorOverride] | None) -> list[TensorOverride]:
    """The user's overrides as a list of (regex, buffer type name), each regex valid for Python and std::regex."""
    out: list[TensorOverride] = []
    for e in entries or ():
        if not (isinstance(e, (tuple, list)) and len(e) == 2 and all(isinstance(x, str) for x in e)):
            raise TensorOverrideError(f"tensor override {e!r}: expected a (regex, buffer type name) pair of strings")
        pattern, buft = e
        if not pattern or not buft:
            raise TensorOverrideError(f"tensor override {e!r}: empty regex or buffer type")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise TensorOverrideError(f"tensor override {pattern!r}: bad regex: {exc}") from exc
        if _NOT_ECMASCRIPT.search(pattern):
            raise TensorOverrideError(f"tensor override {pattern!r}: llama.cpp matches with ECMAScript regexes "
                                      "(std::regex); write it without Python-only syntax")
        out.append((pattern, buft))
    return out


def resolve(entries: Sequence[TensorOverride]) -> list[tuple[str, int]]:
    """Buffer type names -> the registry's buffer types; an unknown or reserved name is an error."""
    from .ggml_devices import buffer_types
    known = buffer_types()
    out = []
    for pattern, name in entries:
        if name == FLASHMOE_BUFT:
            raise TensorOverrideError(f"tensor override {pattern!r}={name}: the flashmoe device holds only the "
                                      "routed experts, which it places itself")
        if name not in known:
            avail = ", ".join(sorted(n for n in known if n != FLASHMOE_BUFT))
            raise TensorOverrideError(f"tensor override {pattern!r}={name}: unknown buffer type {name!r} "
                                      f"(available: {avail})")
        out.append((pattern, known[name]))
    return out


def check_experts_stay(entries: Sequence[TensorOverride], expert_names: Sequence[str]) -> None:
    """Refuse user overrides under which llama.cpp would place a routed-expert tensor off the CPU list (the first
    entry whose regex matches a tensor name decides, as in llama.cpp)."""
    for name in expert_names:
        for pattern, buft in entries:
            if re.search(pattern, name):
                if buft != "CPU":
                    raise TensorOverrideError(
                        f"tensor override {pattern!r}={buft} would put the routed-expert tensor {name} on {buft}: "
                        "flashmoe streams routed experts from disk, they must stay on the CPU (use CPU, or leave "
                        "them out of your overrides)")
                break


def flashmoe_overrides(user: Sequence[TensorOverride], expert_names: Sequence[str],
                       offload: bool) -> OverrideArray | None:
    """The array for a flashmoe load: the user's overrides, then the routed experts to the CPU (our device).
    None when there is nothing to override (no user entries, no GPU layers): the load is then exactly as before."""
    entries = check_overrides(user)
    if not entries and not offload:
        return None
    check_experts_stay(entries, expert_names)
    from .ggml_devices import cpu_buffer_type
    cpu = cpu_buffer_type()
    return OverrideArray(resolve(entries) + [(p, cpu) for _, p in _expert_entries()])


def stock_overrides(user: Sequence[TensorOverride]) -> OverrideArray | None:
    """The array for a stock llama_cpp.Llama (the reference and the benchmark's stock configurations)."""
    entries = check_overrides(user)
    return OverrideArray(resolve(entries)) if entries else None


def _expert_entries() -> list[tuple[str, str]]:
    return [("weights", EXPERT_PATTERN), ("biases", EXPERT_BIAS_PATTERN)]


def experts_to_cpu() -> list[TensorOverride]:
    """Stock's `-ot exps=CPU` with the routed-expert tensors (and their biases) as flashmoe moves them."""
    return [(p, "CPU") for _, p in _expert_entries()]


def llama_kwargs(gpu_layers: int = 0, tensor_overrides: Sequence[TensorOverride] | None = None) -> dict[str, object]:
    """flashmoe_gguf.Llama's arguments for `--gpu-layers N` and `-ot REGEX=BUFT` (run, chat, serve)."""
    if not isinstance(gpu_layers, int) or gpu_layers < -1:
        raise FlashMoeError(f"--gpu-layers must be -1 (all), 0 or a layer count, not {gpu_layers!r}")
    kw: dict[str, object] = {}
    if gpu_layers:
        kw["n_gpu_layers"] = gpu_layers
    if tensor_overrides:
        kw["tensor_overrides"] = check_overrides(tensor_overrides)
    return kw
