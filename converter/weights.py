"""Logical float weights over a checkpoint, whatever their storage: bf16/fp16/fp32, FP8 with block scales
(`weight_scale_inv`, DeepSeek-V3 and Qwen FP8 releases), MLX affine 4/8-bit (`scales`, `biases`) or MXFP4
(`X_blocks` + `X_scales`, GPT-OSS: one logical tensor `X`).

Every accessor can take an index on the first axis, so a stacked expert tensor is read one expert at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .checkpoint import FLOAT_DTYPES, Checkpoint, decode_float
from .errors import CheckpointError

_AUX_SUFFIXES = (".scales", ".biases", ".weight_scale_inv", ".weight_scale", ".input_scale")
_MXFP4_BLOCKS, _MXFP4_SCALES = "_blocks", "_scales"


@dataclass(frozen=True)
class Mxfp4Quant:
    """MXFP4 (OCP microscaling FP4) of one matrix or a stack, as GPT-OSS stores it: per 32 consecutive weights of a
    row, one E8M0 scale byte and 16 bytes of E2M1 codes, element 2k in the low nibble of byte k, 2k+1 in the high."""
    blocks: np.ndarray   # uint8 [..., rows, groups, 16]
    scales: np.ndarray   # uint8 [..., rows, groups]


FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                      dtype=np.float32)


def dequantize_mxfp4(m: Mxfp4Quant) -> np.ndarray:
    """float32 [..., rows, groups * 32]: code value x 2^(scale - 127)"""
    codes = np.empty((*m.blocks.shape[:-1], 32), dtype=np.uint8)
    codes[..., 0::2] = m.blocks & 0x0F
    codes[..., 1::2] = m.blocks >> 4
    vals = np.ldexp(FP4_VALUES[codes], m.scales.astype(np.int32)[..., None] - 127)
    return vals.reshape(*m.blocks.shape[:-2], m.blocks.shape[-2] * 32).astype(np.float32)


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
        out = []
        for n in self.ckpt.names():
            if n.endswith(_AUX_SUFFIXES) and self._is_aux(n):
                continue
            if n.endswith(_MXFP4_SCALES) and self._mxfp4_pair(n[: -len(_MXFP4_SCALES)]):
                continue
            if n.endswith(_MXFP4_BLOCKS) and self._mxfp4_pair(n[: -len(_MXFP4_BLOCKS)]):
                n = n[: -len(_MXFP4_BLOCKS)]
            out.append(n)
        return out

    def _mxfp4_pair(self, base: str) -> bool:
        """`base_blocks` (uint8 [..., groups, 16]) and `base_scales` (uint8 [..., groups]) are one MXFP4 tensor"""
        b, s = base + _MXFP4_BLOCKS, base + _MXFP4_SCALES
        if b not in self.ckpt or s not in self.ckpt or base in self.ckpt:
            return False
        eb, es = self.ckpt.entry(b), self.ckpt.entry(s)
        return (eb.dtype == es.dtype == "U8" and len(eb.shape) >= 2 and eb.shape[-1] == 16
                and es.shape == eb.shape[:-1])

    def is_mxfp4(self, name: str) -> bool:
        return name not in self.ckpt and self._mxfp4_pair(name)

    def _is_aux(self, name: str) -> bool:
        for suf in _AUX_SUFFIXES:
            if name.endswith(suf):
                return f"{name[: -len(suf)]}.weight" in self.ckpt
        return False

    def __contains__(self, name: str) -> bool:
        return name in self.ckpt or self.is_mxfp4(name)

    def is_mlx_quantized(self, name: str) -> bool:
        base = name[: -len(".weight")] if name.endswith(".weight") else name
        return name in self.ckpt and self.ckpt.entry(name).dtype == "U32" and f"{base}.scales" in self.ckpt

    def shape(self, name: str) -> tuple[int, ...]:
        if self.is_mxfp4(name):
            b = self.ckpt.entry(name + _MXFP4_BLOCKS).shape
            return (*b[:-2], b[-2] * 32)
        e = self.ckpt.entry(name)
        if self.is_mlx_quantized(name):
            bits = self._mlx_bits_of(name)
            return (*e.shape[:-1], e.shape[-1] * 32 // bits)
        return e.shape

    def source_dtype(self, name: str) -> str:
        if self.is_mxfp4(name):
            return "MXFP4"
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

    def mxfp4(self, name: str, index: int | None = None) -> Mxfp4Quant:
        """An MXFP4 tensor's blocks and scales as stored (its `index`-th slice along the first axis)."""
        if not self.is_mxfp4(name):
            raise CheckpointError(f"{name}: not an MXFP4 tensor ({name}{_MXFP4_BLOCKS} + {name}{_MXFP4_SCALES})")
        return Mxfp4Quant(self.ckpt.raw(name + _MXFP4_BLOCKS, index), self.ckpt.raw(name + _MXFP4_SCALES, index))

    def _float_raw(self, name: str, index: int | None, rows: tuple[int, int] | None = None) -> np.ndarray:
        e = self.ckpt.entry(name)
        if e.dtype not in FLOAT_DTYPES + ("F8_E4M3", "F8_E5M2"):
            raise CheckpointError(f"{name}: expected a float tensor, found {e.dtype}")
        return decode_float(self.ckpt.raw(name, index, rows), e.dtype)

    def get_rows(self, name: str, r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) of a matrix as float32, reading only those rows where the storage allows it."""
        if self.is_mxfp4(name):
            return self.get(name)[r0:r1]
        e = self.ckpt.entry(name)
        if e.dtype in FLOAT_DTYPES and not self.is_mlx_quantized(name):
            return np.ascontiguousarray(self._float_raw(name, None, (r0, r1)), dtype=np.float32)
        return self.get(name)[r0:r1]

    def get(self, name: str, index: int | None = None) -> np.ndarray:
        """The tensor (or its `index`-th slice along axis 0) as a float32 array."""
        if self.is_mxfp4(name):
            return dequantize_mxfp4(self.mxfp4(name, index))
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
