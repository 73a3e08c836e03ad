"""Stop conditions as small composable policies, in tenacity's shape.

Each condition is called with a ``StopInput`` (the replayed state plus the
current time) and returns a ``StopDecision`` or ``None``. ``a | b`` returns
the first decision of ``a`` then ``b``::

    policy = max_iterations(20) | max_wall_time(3600) | stop_file(paths) | no_progress(3)
    decision = policy(StopInput(state, now))

No condition does I/O except ``stop_file``, whose ``exists`` check is
injected (a real ``Path.exists`` by default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from longrun.journal.state import RunState
from longrun.spec.models import StopConditions


@dataclass(frozen=True)
class StopInput:
    state: RunState
    now: datetime


@dataclass(frozen=True)
class StopDecision:
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


class StopCondition:
    def __call__(self, inp: StopInput) -> StopDecision | None:  # pragma: no cover - interface
        raise NotImplementedError

    def __or__(self, other: StopCondition) -> StopCondition:
        return _Any((self, other))


@dataclass(frozen=True)
class _Any(StopCondition):
    parts: tuple[StopCondition, ...]

    def __call__(self, inp: StopInput) -> StopDecision | None:
        for part in self.parts:
            if (decision := part(inp)) is not None:
                return decision
        return None

    def __or__(self, other: StopCondition) -> StopCondition:
        return _Any(self.parts + (other,))


@dataclass(frozen=True)
class max_iterations(StopCondition):
    limit: int

    def __call__(self, inp: StopInput) -> StopDecision | None:
        done = inp.state.iterations_finished
        if done >= self.limit and inp.state.open_iteration is None:
            return StopDecision("max_iterations", {"limit": self.limit, "iterations": done})
        return None


def elapsed_seconds(state: RunState, now: datetime) -> float:
    """Active wall time: journaled run segments plus the current one up to ``now``."""
    extra = 0.0
    if state.last_event_ts is not None and state.status == "RUNNING":
        extra = max(0.0, (now - state.last_event_ts).total_seconds())
    return state.active_seconds + extra


@dataclass(frozen=True)
class max_wall_time(StopCondition):
    seconds: float

    def __call__(self, inp: StopInput) -> StopDecision | None:
        elapsed = elapsed_seconds(inp.state, inp.now)
        if elapsed >= self.seconds:
            return StopDecision("max_wall_time", {"limit_s": self.seconds, "elapsed_s": round(elapsed, 3)})
        return None


@dataclass(frozen=True)
class stop_file(StopCondition):
    paths: tuple[Path, ...]
    exists: Callable[[Path], bool] = Path.exists

    def __call__(self, inp: StopInput) -> StopDecision | None:
        for p in self.paths:
            if self.exists(p):
                return StopDecision("stop_file", {"path": str(p)})
        if inp.state.stop_requested:
            # `longrun stop` journals its request too: on a remote root that is how it reaches the worker.
            return StopDecision("stop_file", {"requested": True})
        return None


@dataclass(frozen=True)
class no_progress(StopCondition):
    iterations: int

    def __call__(self, inp: StopInput) -> StopDecision | None:
        streak = inp.state.no_progress_streak
        if streak >= self.iterations and inp.state.open_iteration is None:
            return StopDecision(
                "no_progress",
                {"limit": self.iterations, "streak": streak, "fingerprint": inp.state.fingerprints[-1]},
            )
        return None


def policy_from_spec(cond: StopConditions, stop_paths: tuple[Path, ...]) -> StopCondition:
    """The job's stop policy. The stop file comes first so a human always wins."""
    policy: StopCondition = stop_file(stop_paths) | max_iterations(cond.max_iterations)
    if cond.max_wall_time is not None:
        policy = policy | max_wall_time(cond.max_wall_time)
    if cond.no_progress_iterations is not None:
        policy = policy | no_progress(cond.no_progress_iterations)
    return policy
