"""The sandbox chat templates run in: jinja2's ImmutableSandboxedEnvironment (no attribute access to internals, no
mutation of what the caller passes in), plus bounds on the ways a hostile template can make a huge value.

A checkpoint's template is code from a download. The sandbox already stops it from executing anything; these
bounds stop it from exhausting memory: sequence repetition (`'a' * 10**10`), big powers (`10 ** 10**9`),
padding methods (`''.ljust(10**10)`), and the rendered output itself. jinja2 already caps `range()` at 100,000.
"""

from __future__ import annotations

import math
import operator
from typing import Any

from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_VALUE_ELEMENTS = 1 << 22  # characters or items in one value a template builds
MAX_POWER_BITS = 1 << 12  # size of an integer a template may compute with **
MAX_OUTPUT_CHARS = 1 << 25  # rendered prompt text (far beyond any context)
PADDING_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})


def _sized(value: Any) -> bool:
    return isinstance(value, (str, bytes, list, tuple))


class BoundedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, op: str, left: Any, right: Any) -> Any:
        if op == "*":
            seq, count = (left, right) if _sized(left) else (right, left)
            if _sized(seq) and isinstance(count, int) and len(seq) * max(count, 0) > MAX_VALUE_ELEMENTS:
                raise SecurityError(f"chat template built a value of more than {MAX_VALUE_ELEMENTS} elements")
            return operator.mul(left, right)
        if op == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
                if right * math.log2(abs(left)) > MAX_POWER_BITS:
                    raise SecurityError(f"chat template computed an integer of more than {MAX_POWER_BITS} bits")
            return operator.pow(left, right)
        return super().call_binop(context, op, left, right)

    def call(__self, __context, __obj, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja2's signature)
        if getattr(__obj, "__name__", None) in PADDING_METHODS and isinstance(getattr(__obj, "__self__", None), str):
            widths = [a for a in (*args, *kwargs.values()) if isinstance(a, int)]
            if any(w > MAX_VALUE_ELEMENTS for w in widths):
                raise SecurityError(f"chat template padded a string beyond {MAX_VALUE_ELEMENTS} characters")
        return super().call(__context, __obj, *args, **kwargs)


def render_bounded(template, **variables: Any) -> str:
    """Renders piece by piece and stops once the output passes MAX_OUTPUT_CHARS."""
    pieces, total = [], 0
    for piece in template.generate(**variables):
        total += len(piece)
        if total > MAX_OUTPUT_CHARS:
            raise SecurityError(f"chat template output passed {MAX_OUTPUT_CHARS} characters")
        pieces.append(piece)
    return "".join(pieces)
