"""Human sizes ("8G", "512M", "1.5GiB") <-> bytes."""

from __future__ import annotations

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int) -> int:
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"negative size {text}")
        return text
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in _UNITS else (t, "")
    try:
        value = float(num)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 8G, 512M)") from None
    if value < 0:
        raise ValueError(f"negative size {text!r}")
    return int(value * _UNITS[unit])
