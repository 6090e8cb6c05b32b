"""A forward pass's routing records, kept back until the pass succeeds.

A pass reports its routing while it runs: the model calls its routing hooks once per MoE layer (the routing
statistics behind the metrics and the TUI, the trace recorder of `generate --trace-out`), and the expert backend
feeds the expert store's routing profile once per layer step. When a pass fails half way (an expert that cannot
be read), the engine does the work again: a prefill chunk once more, a decode batch request by request. The
retry reports the same routing again, so the layers the failed attempt got through would be counted twice.

`PassRecords.held()` wraps one pass. Inside it, every record becomes a deferred call in one list, in the order
the pass made them:
- the model's hook list holds a single gate instead of the registered hooks; each call of the gate defers one
  call per registered hook;
- an expert backend that records routing itself offers `routing_deferred(defer)` (the expert store's profile),
  and hands its updates to the same list while the pass runs.
When the block completes, the calls run in order and the hooks are back in the list; when it raises, the calls
are dropped, so a failed attempt leaves no record and its retry is counted once. The recorders are unaware of
this: they simply see each pass after it has finished.

A recorder that raises while its records are applied is logged, and the others still get theirs: a recorder's
bug must not fail a pass that produced its tokens.

Registering a hook during a pass works (it sees the rest of that pass live). Unregistering one during a pass
needs `remove_routing_hook`, which also takes it from behind the gate; a plain list removal would be undone
when the pass puts its hooks back.

Not held back: the cache's own bookkeeping (the eviction policy's clock and lookups, the GPU tier's heat). The
failed attempt's reads did happen, and what is cached is the cache's decision.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

Defer = Callable[..., None]  # defer(fn, *args): call fn(*args) if and when the pass succeeds


class _Gate:
    """The one routing hook the model sees during a held pass."""

    def __init__(self, hooks: list, defer: Defer):
        self.hooks = hooks  # the registered hooks, put back when the pass ends
        self._defer = defer

    def __call__(self, layer_idx: int, ids, predicted=None) -> None:
        for hook in list(self.hooks):
            self._defer(self._replay, hook, layer_idx, ids, predicted)

    def _replay(self, hook, layer_idx: int, ids, predicted) -> None:
        if any(h is hook for h in self.hooks):  # not removed while the pass ran
            hook(layer_idx, ids, predicted)


class PassRecords:
    """Holds back the routing records of the passes of `model` (a KimiModel or a stand-in) run inside `held()`."""

    def __init__(self, model):
        self.model = model

    @contextmanager
    def held(self) -> Iterator[None]:
        pending: list[tuple[Callable[..., Any], tuple]] = []

        def defer(fn: Callable[..., Any], *args) -> None:
            pending.append((fn, args))

        hooks = self.model.routing_hooks
        gate = _Gate(list(hooks), defer)
        if gate.hooks:
            hooks[:] = [gate]
        backend = getattr(getattr(self.model, "experts", None), "routing_deferred", None)
        try:
            with backend(defer) if backend is not None else nullcontext():
                yield
        except BaseException:
            pending.clear()
            raise
        finally:
            if gate.hooks or any(h is gate for h in hooks):
                hooks[:] = gate.hooks + [h for h in hooks if h is not gate]  # keeps hooks added meanwhile
        _apply(pending)


def _apply(pending: list[tuple[Callable[..., Any], tuple]]) -> None:
    for fn, args in pending:
        try:
            fn(*args)
        except Exception:
            log.exception("a routing recorder failed on the records of a finished pass")


def remove_routing_hook(model, hook) -> None:
    """Unregister `hook` from `model.routing_hooks`, also while a pass holds it back (no-op if absent)."""
    for registered in list(model.routing_hooks):
        if isinstance(registered, _Gate):
            registered.hooks[:] = [h for h in registered.hooks if h is not hook]
    model.routing_hooks[:] = [h for h in model.routing_hooks if h is not hook]
