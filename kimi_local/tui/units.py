"""How the panel writes numbers: bytes in binary units, rates, durations, shares; None is always "n/a"."""

from __future__ import annotations

NA = "n/a"


def fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return NA
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def fmt_rate(tokens_per_second: float | None) -> str:
    if tokens_per_second is None:
        return NA
    if tokens_per_second >= 100:
        return f"{tokens_per_second:.0f} tok/s"
    return f"{tokens_per_second:.1f} tok/s"


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return NA
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def fmt_share(fraction: float | None) -> str:
    return NA if fraction is None else f"{100 * fraction:.1f}%"


def fmt_count_of(used: int | None, total: int | None) -> str:
    if used is None:
        return NA
    return f"{used} / {total}" if total else str(used)
