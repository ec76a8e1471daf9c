"""Which code computes the routed-expert products: our kernels on one instruction set, or ggml's own.

Every choice gives stock llama.cpp's results bit for bit; they differ in speed. Our kernels
(ggml_ext/fm_kernels*.c) reproduce the arithmetic of ggml's x86 AVX2 + FMA code, so they are used only where
the installed ggml-cpu was built with it; elsewhere (another architecture, an x86 build without AVX2) only
ggml's own code is exact, and "auto" picks it.

The choice: the `isa` argument of `flashmoe_gguf.Llama`, else the FLASHMOE_ISA environment variable, else
"auto" (the best instruction set this CPU has). `kernels=False` means "ggml".

ggml's tiled K-quant path (taken for an expert that receives 8 or more rows of a batch) is switched by the
environment variables ggml-cpu reads, GGML_CPU_TILED_MM and GGML_CPU_TILED_MM_FORCE; our kernels follow the
same switches so that they keep computing what ggml computes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from . import extension

ISA_NAMES = ("ggml", "scalar", "avx2", "avx512")
ENV = "FLASHMOE_ISA"
CHOICES = ("auto", *ISA_NAMES)


def isa_code(name: str) -> int:
    """The C enum fm_isa value of an instruction set name (ggml_ext/fm_types.h)"""
    return int(getattr(extension.constants(), f"FM_ISA_{name.upper()}"))


def isa_name(code: int) -> str:
    return next(n for n in ISA_NAMES if isa_code(n) == code)


class IsaError(ValueError):
    """An instruction set was asked for that this CPU or this ggml cannot use."""


@dataclass(frozen=True)
class IsaChoice:
    name: str            # "ggml", "scalar", "avx2" or "avx512"
    note: str | None     # why "auto" did not pick our kernels, if it did not

    @property
    def code(self) -> int:
        return isa_code(self.name)


def resolve_isa(isa: str | None, kernels: bool, cpu_isa: int, ggml_x86_arith: bool,
                environ: Mapping[str, str] | None = None) -> IsaChoice:
    """The expert-product code to use. isa: the Llama argument (None: FLASHMOE_ISA, else "auto"); cpu_isa:
    the best instruction set of this CPU (an fm_isa value, isa_code(name)); ggml_x86_arith: ggml-cpu uses its
    x86 AVX2 + FMA arithmetic."""
    env = os.environ if environ is None else environ
    from_env = isa is None
    want = (env.get(ENV, "") if from_env else isa).strip().lower() or "auto"
    source = f"{ENV}={want}" if from_env else f"isa={want!r}"
    if want not in CHOICES:
        raise IsaError(f"{source}: unknown instruction set (choose from {', '.join(CHOICES)})")
    if not kernels:
        if want not in ("auto", "ggml") and not from_env:
            raise IsaError(f"{source} asks for our kernels, but kernels=False asks for ggml's own code")
        return IsaChoice("ggml", None)
    if want == "ggml":
        return IsaChoice("ggml", None)
    if want == "auto":
        if not ggml_x86_arith:
            return IsaChoice("ggml", "the installed ggml-cpu does not use its x86 AVX2+FMA code, which is the "
                                     "arithmetic our kernels reproduce: using ggml's own code")
        return IsaChoice(isa_name(cpu_isa), None)
    if isa_code(want) > cpu_isa:
        raise IsaError(f"{source}: this CPU cannot run it (best available: {isa_name(cpu_isa)})")
    if not ggml_x86_arith:
        raise IsaError(f"{source}: our kernels reproduce ggml's x86 AVX2+FMA arithmetic, but the installed ggml-cpu "
                       "was built without it; only ggml's own code (isa='ggml') is exact here")
    return IsaChoice(want, None)


def _atoi(text: str) -> int:
    """C's atoi, which ggml applies to its environment variables: leading blanks, a sign, digits; 0 otherwise."""
    s = text.lstrip(" \t\n\r\f\v")
    sign = -1 if s[:1] == "-" else 1
    if s[:1] in "+-":
        s = s[1:]
    digits = len(s) - len(s.lstrip("0123456789"))
    return sign * int(s[:digits]) if digits else 0


def tiled_setting(environ: Mapping[str, str] | None = None) -> str:
    """How ggml-cpu (ggml-cpu/tiled/tiled.cpp) sets its tiled K-quant path from the environment: "off" when
    GGML_CPU_TILED_MM is set and atoi() of it is 0, "force" when atoi(GGML_CPU_TILED_MM_FORCE) == 1, else "on"
    (for experts with 8 or more rows). ggml reads both once per process, at its first matrix product."""
    env = os.environ if environ is None else environ
    enabled = env.get("GGML_CPU_TILED_MM")
    if enabled is not None and _atoi(enabled) == 0:
        return "off"
    forced = env.get("GGML_CPU_TILED_MM_FORCE")
    return "force" if forced is not None and _atoi(forced) == 1 else "on"


def tiled_mode(environ: Mapping[str, str] | None = None) -> int:
    """tiled_setting as the C enum fm_tiled (ggml_ext/fm_types.h)"""
    return int(getattr(extension.constants(), f"FM_TILED_{tiled_setting(environ).upper()}"))
