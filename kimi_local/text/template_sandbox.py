"""The sandbox chat templates run in: jinja2's ImmutableSandboxedEnvironment (no attribute access to internals, no
mutation of what the caller passes in), plus bounds on the memory and the time one render may take.

A checkpoint's template is code from a download. The sandbox already stops it from executing anything; these
bounds stop it from exhausting memory or CPU time.

Memory: no value a template builds may pass MAX_VALUE_ELEMENTS characters or items, and the rendered output
MAX_OUTPUT_CHARS. What can build a big value is checked before it runs: repetition (`'a' * 10**10`), `+` and
`~` concatenation, big powers (`10 ** 10**9`), `replace` and `join` (filter or method), `indent`, and any integer
argument of a filter or method beyond the element bound (`center(10**10)`, `ljust`, `wordwrap`, ...); widths in
format strings (`'%1500000000d' % 1`, `'{:>1500000000}'.format(1)`, the `format` filter). jinja2 caps `range()`
at 100,000.

Time: one render takes at most MAX_STEPS steps and MAX_SECONDS of wall time, checked at every step. A step is one
iteration of any `{% for %}` loop (recursive `loop(...)` calls included) or one call: a macro, a filter (also the
per-item calls of `map`, `select` and the like), a test, a method. So nested loops that write nothing, macros
that double their calls and steps that are each slow all end. Every parsed `for` gets its iterable wrapped in
`counted_iter`, and every `~` becomes `bounded_concat`, referenced by import name so that a template cannot
shadow them; every call in a sandbox goes through `call`; filters and tests are wrapped where the environment
hands them out. Real chat templates take about five steps per message.
"""

from __future__ import annotations

import functools
import math
import operator
import re
import time
from contextvars import ContextVar
from typing import Any, Callable, Iterable, Iterator

from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

MAX_VALUE_ELEMENTS = 1 << 22  # characters or items in one value a template builds
MAX_POWER_BITS = 1 << 12  # size of an integer a template may compute with **
MAX_OUTPUT_CHARS = 1 << 25  # rendered prompt text (far beyond any context)
MAX_STEPS = 1 << 18  # loop iterations plus calls in one render
MAX_SECONDS = 3.0  # wall time of one render (the Kimi template renders 6,000 messages in 0.2 s)
PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\d*)(?:\.(\d*))?")  # printf-style width and precision
BRACE_SPEC = re.compile(r"\{[^{}]*:([^{}]*)\}")  # the spec of a str.format field


class StepBudget:
    def __init__(self, steps: int, seconds: float):
        self._left = steps
        self._deadline = time.monotonic() + seconds

    def spend(self) -> None:
        self._left -= 1
        if self._left < 0:
            raise SecurityError(f"chat template took more than {MAX_STEPS} steps (loop iterations and calls)")
        if time.monotonic() > self._deadline:
            raise SecurityError(f"chat template took more than {MAX_SECONDS:g} s to render")


_budget: ContextVar[StepBudget | None] = ContextVar("template_step_budget", default=None)


def _spend() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.spend()


def _too_big(what: str) -> SecurityError:
    return SecurityError(f"chat template {what} beyond {MAX_VALUE_ELEMENTS} elements")


def _sized(value: Any) -> bool:
    return isinstance(value, (str, bytes, list, tuple))


def counted_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    """What a template's `for` loops over: the items of `iterable`, one step each."""
    for item in iterable:
        _spend()
        yield item


def bounded_concat(*parts: Any) -> str:
    """The `~` operator: the parts as strings, joined, if the result stays within the element bound."""
    texts = [str(p) for p in parts]
    if sum(map(len, texts)) > MAX_VALUE_ELEMENTS:
        raise _too_big("concatenated a string")
    return "".join(texts)


def _check_format(fmt: Any) -> None:
    """Widths and precisions in a %- or {}-format string must stay within the element bound."""
    if not isinstance(fmt, str):
        return
    numbers = [n for m in PERCENT_FIELD.finditer(fmt) for n in m.groups() if n]
    numbers += [n for spec in BRACE_SPEC.findall(fmt) for n in re.findall(r"\d+", spec)]
    if any(int(n) > MAX_VALUE_ELEMENTS for n in numbers):
        raise _too_big("formatted a field")


def _check_call(name: str | None, target: Any, args: tuple, kwargs: dict) -> None:
    """Bounds for one filter or method call: `target` is the value it works on (the filter's first argument or
    the method's object), `args` and `kwargs` the rest."""
    values = (*args, *kwargs.values())
    if any(isinstance(v, int) and not isinstance(v, bool) and v > MAX_VALUE_ELEMENTS for v in values):
        raise _too_big(f"called {name}() with a size")
    if not isinstance(target, str):
        return
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        hits = len(target) + 1 if not old else target.count(old)
        if len(target) + hits * (len(new) - len(old)) > MAX_VALUE_ELEMENTS:
            raise _too_big("replaced text")
    elif name == "indent":
        width = args[0] if args else kwargs.get("width", 4)
        width = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        if len(target) + width * (target.count("\n") + 1) > MAX_VALUE_ELEMENTS:
            raise _too_big("indented text")
    elif name == "format":
        _check_format(target)


def _check_join(separator: Any, items: Any) -> list:
    """The items of a join as a list, refused if the joined string would pass the element bound."""
    items = list(items)
    size = len(str(separator)) * max(len(items) - 1, 0)
    for item in items:
        size += len(item) if isinstance(item, str) else len(str(item))
        if size > MAX_VALUE_ELEMENTS:
            raise _too_big("joined a string")
    return items


def _counted_filter(name: str, func: Callable) -> Callable:
    """A filter or test that spends a step per call and checks its arguments (jinja's pass_context and
    pass_environment markers are kept by functools.wraps)."""
    takes_context = getattr(func, "jinja_pass_arg", None) is not None

    @functools.wraps(func)
    def counted(*args: Any, **kwargs: Any) -> Any:
        _spend()
        value_at = 1 if takes_context else 0  # the context or environment comes first for marked filters
        if len(args) > value_at:
            value, rest = args[value_at], args[value_at + 1 :]
            _check_call(name, value, rest, kwargs)
            if name == "join":
                separator = rest[0] if rest else kwargs.get("d", "")
                args = (*args[:value_at], _check_join(separator, value), *rest)
        return func(*args, **kwargs)

    return counted


class _CountedFilters(dict):
    """The environment's filters (or tests): what a template gets out is the counted, checked version."""

    def __getitem__(self, name: str) -> Callable:
        return _counted_filter(name, super().__getitem__(name))

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default


class _BoundTemplateTree(NodeTransformer):
    """Wraps each `for` iterable in `counted_iter` and turns each `~` into `bounded_concat`."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)
        node.iter = nodes.Call(nodes.ImportedName(f"{__name__}.counted_iter"), [node.iter], [], None, None,
                               lineno=node.iter.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)
        return nodes.Call(nodes.ImportedName(f"{__name__}.bounded_concat"), list(node.nodes), [], None, None,
                          lineno=node.lineno)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.filters = _CountedFilters(self.filters)
        self.tests = _CountedFilters(self.tests)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        return _BoundTemplateTree().visit(super()._parse(source, name, filename))

    def call_binop(self, context, op: str, left: Any, right: Any) -> Any:
        if op == "*":
            seq, count = (left, right) if _sized(left) else (right, left)
            if _sized(seq) and isinstance(count, int) and len(seq) * max(count, 0) > MAX_VALUE_ELEMENTS:
                raise _too_big("built a value")
            return operator.mul(left, right)
        if op == "+":
            if _sized(left) and _sized(right) and len(left) + len(right) > MAX_VALUE_ELEMENTS:
                raise _too_big("concatenated a value")
            return operator.add(left, right)
        if op == "%":
            _check_format(left)
            return operator.mod(left, right)
        if op == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
                if right * math.log2(abs(left)) > MAX_POWER_BITS:
                    raise SecurityError(f"chat template computed an integer of more than {MAX_POWER_BITS} bits")
            return operator.pow(left, right)
        return super().call_binop(context, op, left, right)

    def call(__self, __context, __obj, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja2's signature)
        _spend()
        if isinstance(__obj, LoopContext) and args:  # a recursive loop over a new iterable
            args = (counted_iter(args[0]), *args[1:])
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox hands out str.format wrapped
        target = getattr(method, "__self__", None)
        name = getattr(method, "__name__", None)
        if target is not None:  # a bound method, e.g. 'x'.center(10**10), ', '.join(items)
            _check_call(name, target, args, kwargs)
            if name == "join" and isinstance(target, str) and args:
                args = (_check_join(target, args[0]), *args[1:])
        else:
            _check_call(name, None, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)


def render_bounded(template, **variables: Any) -> str:
    """Renders piece by piece and stops once the output passes MAX_OUTPUT_CHARS or the render its step or time
    budget."""
    pieces, total = [], 0
    token = _budget.set(StepBudget(MAX_STEPS, MAX_SECONDS))
    try:
        for piece in template.generate(**variables):
            total += len(piece)
            if total > MAX_OUTPUT_CHARS:
                raise SecurityError(f"chat template output passed {MAX_OUTPUT_CHARS} characters")
            pieces.append(piece)
    finally:
        _budget.reset(token)
    return "".join(pieces)
