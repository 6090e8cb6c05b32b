"""The sandbox chat templates run in: jinja2's ImmutableSandboxedEnvironment (no attribute access to internals, no
mutation of what the caller passes in), plus bounds on the ways a hostile template can make a huge value.

A checkpoint's template is code from a download. The sandbox already stops it from executing anything; these
bounds stop it from exhausting memory: sequence repetition (`'a' * 10**10`), big powers (`10 ** 10**9`),
padding methods (`''.ljust(10**10)`), and the rendered output itself. jinja2 already caps `range()` at 100,000.

And from burning CPU time: one render may take at most MAX_STEPS steps, a step being one iteration of any
`{% for %}` loop or one call (a macro, a filter, a method). Loops that write nothing (nested `range` loops) and
recursive macros that double their calls are stopped that way; the output bound never sees them. Every parsed
`for` gets its iterable wrapped in `counted_iter`, referenced by import name so that a template cannot shadow it,
and every call in a sandbox goes through `call`. Real chat templates take a few steps per message.
"""

from __future__ import annotations

import math
import operator
from contextvars import ContextVar
from typing import Any, Iterable, Iterator

from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_VALUE_ELEMENTS = 1 << 22  # characters or items in one value a template builds
MAX_POWER_BITS = 1 << 12  # size of an integer a template may compute with **
MAX_OUTPUT_CHARS = 1 << 25  # rendered prompt text (far beyond any context)
PADDING_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
MAX_STEPS = 1 << 18  # loop iterations plus calls in one render (the Kimi template: ~5 per message)


class StepBudget:
    def __init__(self, steps: int):
        self._left = steps

    def spend(self) -> None:
        self._left -= 1
        if self._left < 0:
            raise SecurityError(f"chat template took more than {MAX_STEPS} steps (loop iterations and calls)")


_budget: ContextVar[StepBudget | None] = ContextVar("template_step_budget", default=None)


def _spend() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.spend()


def counted_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    """What a template's `for` loops over: the items of `iterable`, one step each."""
    for item in iterable:
        _spend()
        yield item


def _sized(value: Any) -> bool:
    return isinstance(value, (str, bytes, list, tuple))


class BoundedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(nodes.ImportedName(f"{__name__}.counted_iter"), [loop.iter], [], None, None,
                                   lineno=loop.iter.lineno)
        return tree

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
        _spend()
        if getattr(__obj, "__name__", None) in PADDING_METHODS and isinstance(getattr(__obj, "__self__", None), str):
            widths = [a for a in (*args, *kwargs.values()) if isinstance(a, int)]
            if any(w > MAX_VALUE_ELEMENTS for w in widths):
                raise SecurityError(f"chat template padded a string beyond {MAX_VALUE_ELEMENTS} characters")
        return super().call(__context, __obj, *args, **kwargs)


def render_bounded(template, **variables: Any) -> str:
    """Renders piece by piece and stops once the output passes MAX_OUTPUT_CHARS or the render MAX_STEPS."""
    pieces, total = [], 0
    token = _budget.set(StepBudget(MAX_STEPS))
    try:
        for piece in template.generate(**variables):
            total += len(piece)
            if total > MAX_OUTPUT_CHARS:
                raise SecurityError(f"chat template output passed {MAX_OUTPUT_CHARS} characters")
            pieces.append(piece)
    finally:
        _budget.reset(token)
    return "".join(pieces)
