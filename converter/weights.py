"""Logical float weights over a checkpoint, whatever their storage: bf16/fp16/fp32, FP8 with block scales
(`weight_scale_inv`, DeepSeek-V3 and Qwen FP8 releases) or MLX affine 4/8-bit (`scales`, `biases`).

Every accessor can take an index on the first axis, so a stacked expert tensor is read one expert at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .checkpoint import FLOAT_DTYPES, Checkpoint, decode_float
from .errors import CheckpointError

_AUX_SUFFIXES = (".scales", ".biases", ".weight_scale_inv", ".weight_scale", ".input_scale")


@dataclass(frozen=True)
class MlxQuant:
    """MLX affine quantization of one matrix (or a stack): w = q * scale + bias, per group along rows."""
    q: np.ndarray        # uint32 [..., out, in * bits / 32]
    scales: np.ndarray   # float32 [..., out, in / group]
    biases: np.ndarray   # float32 [..., out, in / group]
    bits: int
    group: int


def unpack_mlx(q: np.ndarray, bits: int) -> np.ndarray:
    """uint32 words -> uint8 codes, element j of a word in bits [j*bits, (j+1)*bits) (little-endian)."""
    per_word = 32 // bits
    shifts = (np.arange(per_word, dtype=np.uint32) * bits)
    codes = (q[..., None] >> shifts) & np.uint32((1 << bits) - 1)
    return codes.reshape(*q.shape[:-1], q.shape[-1] * per_word).astype(np.uint8)


def dequantize_mlx(m: MlxQuant) -> np.ndarray:
    codes = unpack_mlx(m.q, m.bits).astype(np.float32)
    shp = codes.shape
    g = codes.reshape(*shp[:-1], shp[-1] // m.group, m.group)
    return (g * m.scales[..., None] + m.biases[..., None]).reshape(shp)


class Weights:
    """Float32 view of the checkpoint's tensors, hiding the quantization side tensors."""

    def __init__(self, ckpt: Checkpoint, config: dict[str, Any]) -> None:
        self.ckpt = ckpt
        q = config.get("quantization") or config.get("quantization_config") or {}
        self.mlx_bits: int | None = None
        self.mlx_group = 64
        if "bits" in q and "group_size" in q and q.get("quant_method") in (None, "mlx", "affine"):
            self.mlx_bits = int(q["bits"])
            self.mlx_group = int(q["group_size"])
        self.fp8_block: tuple[int, int] | None = None
        if q.get("quant_method") == "fp8":
            blk = q.get("weight_block_size") or [128, 128]
            self.fp8_block = (int(blk[0]), int(blk[1]))

    # -- discovery --------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return [n for n in self.ckpt.names() if not (n.endswith(_AUX_SUFFIXES) and self._is_aux(n))]

    def _is_aux(self, name: str) -> bool:
        for suf in _AUX_SUFFIXES:
            if name.endswith(suf):
                return f"{name[: -len(suf)]}.weight" in self.ckpt
        return False

    def __contains__(self, name: str) -> bool:
        return name in self.ckpt

    def is_mlx_quantized(self, name: str) -> bool:
        base = name[: -len(".weight")] if name.endswith(".weight") else name
        return self.ckpt.entry(name).dtype == "U32" and f"{base}.scales" in self.ckpt

    def shape(self, name: str) -> tuple[int, ...]:
        e = self.ckpt.entry(name)
        if self.is_mlx_quantized(name):
            bits = self._mlx_bits_of(name)
            return (*e.shape[:-1], e.shape[-1] * 32 // bits)
        return e.shape

    def source_dtype(self, name: str) -> str:
        if self.is_mlx_quantized(name):
            return f"MLX{self._mlx_bits_of(name)}"
        return self.ckpt.entry(name).dtype

    # -- reading ----------------------------------------------------------------------------------------
    def _mlx_bits_of(self, name: str) -> int:
        base = name[: -len(".weight")]
        packed = self.ckpt.entry(name).shape[-1]
        n_groups = self.ckpt.entry(f"{base}.scales").shape[-1]
        # in_features = n_groups * group = packed * 32 / bits
        if self.mlx_bits is not None and packed * 32 // self.mlx_bits == n_groups * self.mlx_group:
            return self.mlx_bits
        for bits in (4, 8, 2, 3, 6, 5):
            if (packed * 32) % bits == 0 and packed * 32 // bits == n_groups * self.mlx_group:
                return bits
        raise CheckpointError(f"{name}: cannot infer MLX bit width (packed {packed}, groups {n_groups})")

    def mlx(self, name: str, index: int | None = None) -> MlxQuant:
        base = name[: -len(".weight")]
        q = self.ckpt.raw(name, index)
        scales = self._float_raw(f"{base}.scales", index)
        biases = self._float_raw(f"{base}.biases", index)
        bits = self._mlx_bits_of(name)
        group = q.shape[-1] * 32 // bits // scales.shape[-1]
        if scales.shape != biases.shape or scales.shape[:-1] != q.shape[:-1]:
            raise CheckpointError(f"{name}: MLX scales/biases shapes {scales.shape}/{biases.shape} "
                                  f"do not match weight {q.shape}")
        return MlxQuant(q, scales, biases, bits, group)

    def _float_raw(self, name: str, index: int | None, rows: tuple[int, int] | None = None) -> np.ndarray:
        e = self.ckpt.entry(name)
        if e.dtype not in FLOAT_DTYPES + ("F8_E4M3", "F8_E5M2"):
            raise CheckpointError(f"{name}: expected a float tensor, found {e.dtype}")
        return decode_float(self.ckpt.raw(name, index, rows), e.dtype)

    def get_rows(self, name: str, r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) of a matrix as float32, reading only those rows where the storage allows it."""
        e = self.ckpt.entry(name)
        if e.dtype in FLOAT_DTYPES and not self.is_mlx_quantized(name):
            return np.ascontiguousarray(self._float_raw(name, None, (r0, r1)), dtype=np.float32)
        return self.get(name)[r0:r1]

    def get(self, name: str, index: int | None = None) -> np.ndarray:
        """The tensor (or its `index`-th slice along axis 0) as a float32 array."""
        e = self.ckpt.entry(name)
        if self.is_mlx_quantized(name):
            return dequantize_mlx(self.mlx(name, index))
        w = self._float_raw(name, index)
        if e.dtype.startswith("F8_"):
            base = name[: -len(".weight")] if name.endswith(".weight") else name
            sname = f"{base}.weight_scale_inv"
            if sname not in self.ckpt:
                raise CheckpointError(f"{name}: FP8 weight without {sname}")
            w = self._apply_block_scale(name, w, self._float_raw(sname, index))
        return np.ascontiguousarray(w, dtype=np.float32)

    def _apply_block_scale(self, name: str, w: np.ndarray, s: np.ndarray) -> np.ndarray:
        rows, cols = w.shape[-2:]
        br = -(-rows // s.shape[-2]) if s.ndim >= 2 else rows
        bc = -(-cols // s.shape[-1]) if s.ndim >= 1 else cols
        if self.fp8_block is not None:
            br, bc = self.fp8_block
        if s.shape[-2:] != (-(-rows // br), -(-cols // bc)):
            raise CheckpointError(f"{name}: scale shape {s.shape} does not match weight {w.shape} "
                                  f"with {br}x{bc} blocks")
        full = np.repeat(np.repeat(s, br, axis=-2), bc, axis=-1)[..., :rows, :cols]
        return w * full
