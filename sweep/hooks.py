"""The seam between a running trial and whoever drives it (a sweep worker, a pruner).

The trial loop calls ``current().report(epoch, metrics)`` after every epoch; a driver installs
its own hooks with ``use(hooks)``. Outside a sweep the default hooks do nothing, so
``python run.py`` trains to its full budget.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Mapping


class TrialHooks:
    """Default hooks: never stop a trial early."""

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        """Called after each epoch (1-based) with that epoch's metrics (``val_top1``, ``loss``...,
        and the model's cost ``madds``/``params``, which the rung scheduler ranks on).
        Return True to stop the trial now (it is then recorded as pruned at this fidelity)."""
        return False


_CURRENT: contextvars.ContextVar[TrialHooks] = contextvars.ContextVar("coordsweep_trial_hooks",
                                                                      default=TrialHooks())


def current() -> TrialHooks:
    """The hooks of the running trial."""
    return _CURRENT.get()


@contextlib.contextmanager
def use(hooks: TrialHooks) -> Iterator[TrialHooks]:
    """Install ``hooks`` for the trials run inside the ``with`` block."""
    token = _CURRENT.set(hooks)
    try:
        yield hooks
    finally:
        _CURRENT.reset(token)
