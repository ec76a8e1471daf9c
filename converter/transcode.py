"""Quantized checkpoints -> GGUF types without a round trip through float: MLX affine 4-bit -> Q4_1, and
MXFP4 (GPT-OSS) -> ggml's MXFP4, bit for bit.

MXFP4: both store 32 weights as one E8M0 scale byte and 16 bytes of E2M1 codes (the same codes and scale; ggml's
value table is doubled with the scale halved, the same numbers). Only the byte layout differs: GPT-OSS packs
elements 2k and 2k+1 into byte k (low nibble first) and keeps a row's scales apart from its codes; a ggml block is
the scale byte followed by byte j holding elements j (low nibble) and j + 16.

MLX affine 4-bit:
MLX stores w = q * scale + bias per group of 64 (or 32, 128) consecutive weights, q in 0..15. Q4_1 stores
w = q * d + m per block of 32 with f16 d and m. One MLX group is therefore 2 (or 1, 4) Q4_1 blocks sharing
its scale and bias: the 4-bit codes are copied as they are, only their nibble order changes. The mapping is
exact whenever scale and bias are exactly representable in f16 (MLX stores them in bf16; bf16 values outside
f16's normal range lose bits); `transcode_q4_1` reports the largest error it introduced.
"""

from __future__ import annotations

import numpy as np

from .errors import ConversionError
from .weights import MlxQuant, Mxfp4Quant, unpack_mlx

Q4_1_BLOCK = 32
Q4_1_BYTES = 20


def transcode_q4_1(m: MlxQuant) -> tuple[np.ndarray, float]:
    """MLX 4-bit matrix [rows, cols] -> (Q4_1 bytes [rows, cols / 32 * 20], max |error| vs the MLX value)."""
    if m.bits != 4 or m.group % Q4_1_BLOCK:
        raise ConversionError(f"MLX {m.bits}-bit group {m.group} has no exact Q4_1 mapping")
    codes = unpack_mlx(m.q, 4)                     # [rows, cols]
    rows, cols = codes.shape
    nb = cols // Q4_1_BLOCK
    per_group = m.group // Q4_1_BLOCK
    scales = np.repeat(m.scales.astype(np.float32), per_group, axis=-1)   # [rows, nb]
    biases = np.repeat(m.biases.astype(np.float32), per_group, axis=-1)
    d16 = scales.astype(np.float16)
    m16 = biases.astype(np.float16)
    if not (np.isfinite(d16).all() and np.isfinite(m16).all()):
        raise ConversionError("MLX scales or biases overflow f16; choose another --experts type")
    blocks = codes.reshape(rows, nb, Q4_1_BLOCK)
    qs = (blocks[..., :16] | (blocks[..., 16:] << 4)).astype(np.uint8)    # byte j: elements j and j+16
    out = np.empty((rows, nb, Q4_1_BYTES), dtype=np.uint8)
    out[..., 0:2] = d16.view(np.uint8).reshape(rows, nb, 2)
    out[..., 2:4] = m16.view(np.uint8).reshape(rows, nb, 2)
    out[..., 4:] = qs
    # error bound: |q*(d - d16) + (m - m16)| <= 15*|d - d16| + |m - m16| per block
    err = 15.0 * np.abs(scales - d16.astype(np.float32)) + np.abs(biases - m16.astype(np.float32))
    return out.reshape(rows, nb * Q4_1_BYTES), float(err.max(initial=0.0))


MXFP4_BLOCK_BYTES = 17


def transcode_mxfp4(m: Mxfp4Quant) -> np.ndarray:
    """GPT-OSS MXFP4 [rows, groups, 16] + scales [rows, groups] -> ggml MXFP4 bytes [rows, groups * 17]."""
    if m.blocks.shape[-1] != 16 or m.scales.shape != m.blocks.shape[:-1]:
        raise ConversionError(f"MXFP4 blocks {list(m.blocks.shape)} and scales {list(m.scales.shape)} do not match")
    codes = np.empty((*m.blocks.shape[:-1], 32), dtype=np.uint8)
    codes[..., 0::2] = m.blocks & 0x0F
    codes[..., 1::2] = m.blocks >> 4
    out = np.empty((*m.blocks.shape[:-1], MXFP4_BLOCK_BYTES), dtype=np.uint8)
    out[..., 0] = m.scales
    out[..., 1:] = codes[..., :16] | (codes[..., 16:] << 4)
    return out.reshape(*m.blocks.shape[:-2], m.blocks.shape[-2] * MXFP4_BLOCK_BYTES)
