"""Human-readable sizes, counts and rates for command output (binary units for bytes, as the config uses)."""

from __future__ import annotations

import math


def size(nbytes: float) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.{1 if abs(nbytes) >= 10 * scale else 2}f} {unit}"
    return f"{int(nbytes)} B"


def count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.{1 if abs(n) >= 10 * scale else 2}f} {unit}"
    return str(int(n))


def rate(bytes_per_s: float | None) -> str:
    return "?" if bytes_per_s is None else f"{bytes_per_s / 1e9:.1f} GB/s"


def seconds(s: float) -> str:
    if s == 0:
        return "0 s"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"


def tokens_per_s(value: float) -> str:
    if math.isinf(value):
        return "unbounded"
    return f"{value:.3g} tokens/s"
