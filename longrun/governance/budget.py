"""The budget governor (SPEC E4): pure checks of spend against the job's limits.

Budgets are small composable policies in the shape of :mod:`longrun.governance.stop`
(and tenacity's ``stop.py``)::

    policy = max_total_usd(5.0) | max_tokens(200_000) | max_usd_per_hour(1.0)
    decision = policy(BudgetInput(state, now, expected_usd=0.3, expected_tokens=1200))

Each limit is called with a :class:`BudgetInput` — the replayed state, the
current time and the spend *expected* from the next unit of work — and returns
a :class:`BudgetDecision` or ``None``. :class:`BudgetGovernor` builds the
policy from a spec's ``budgets`` and adds the ``on_hourly_limit: wait`` logic.
Nothing here reads a clock or a file: ``now`` is a parameter and every spend
comes from ``state.usage_log`` (one entry per journaled ``stage_finished``).

When is a limit crossed
-----------------------
A limit stops the run when ``current + expected > limit`` **or** when
``current >= limit`` (a limit already reached stops even with ``expected == 0``,
so a run never starts a stage with its budget already spent; a limit of 0 means
"no spend at all"). USD comparisons allow ``1e-9`` of float noise, so three
stages of 0.30 against a limit of 0.90 land exactly on the limit and are allowed.

Why overshoot is bounded by one stage
-------------------------------------
The flow checks before every stage with ``expected`` = the largest spend that
stage has had so far (:func:`expected_stage_spend`). If the check passes,
``current + expected <= limit``; the stage then spends ``actual``, so the total
afterwards is at most ``limit + (actual - expected) <= limit + actual``. Spend
only grows by stages, and every stage is preceded by a check, so the total can
exceed a limit by at most the spend of the one stage that crossed it — and
only when that stage cost more than it ever had before (its first run, where
``expected`` is 0, or a run more expensive than any earlier one). Once over,
``current >= limit`` refuses everything after.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from longrun.errors import LongrunError
from longrun.journal.state import RunState
from longrun.spec.models import Budgets

__all__ = [
    "HOUR",
    "BudgetDecision",
    "BudgetGovernor",
    "BudgetInput",
    "BudgetLimit",
    "Usage",
    "expected_iteration_spend",
    "expected_stage_io",
    "expected_stage_spend",
    "max_input_tokens",
    "max_job_total_usd",
    "max_output_tokens",
    "max_tokens",
    "max_total_usd",
    "max_usd_per_hour",
    "usage",
    "usd_in_window",
]

#: The sliding window of ``per_hour_usd``. An entry counts while ``now - ts < HOUR``.
HOUR = timedelta(minutes=60)

#: Float noise tolerated in USD comparisons.
_EPS = 1e-9

Reason = Literal["total_usd", "usd", "tokens", "input_tokens", "output_tokens", "per_hour_usd", "job_total_usd"]


def _r(x: float) -> float:
    """Round away float noise for counters (0.30000000000000004 → 0.3)."""
    return round(x, 9)


def _in_window(ts: datetime, now: datetime) -> bool:
    # Entries stamped after ``now`` (clock skew between writers) count: that
    # errs on the side of spending less.
    return now - ts < HOUR


def usd_in_window(state: RunState, now: datetime) -> float:
    """USD of the ``stage_finished`` entries within the 60 minutes ending at ``now``."""
    total = 0.0
    for e in reversed(state.usage_log):  # newest first: stop at the first entry older than the window
        if not _in_window(e.ts, now):
            break
        total += e.usd
    return _r(total)


@dataclass(frozen=True)
class Usage:
    """Spend totals of one job at one instant."""

    usd_total: float
    tokens_total: int
    usd_last_hour: float


def usage(state: RunState, now: datetime) -> Usage:
    """Totals from the journal: all USD, all tokens, and USD in the hour ending at ``now``."""
    return Usage(
        usd_total=_r(state.usd_total),
        tokens_total=state.tokens_total,
        usd_last_hour=usd_in_window(state, now),
    )


def expected_stage_spend(state: RunState, stage_id: str) -> tuple[float, int]:
    """The largest ``(usd, tokens)`` the stage has spent in one run so far, or ``(0.0, 0)``.

    Looks at every journaled ``stage_finished`` of the stage (any iteration;
    the open one can only raise the estimate). USD and tokens are maximised
    separately, which can only make the estimate more cautious.
    """
    return state.stage_max_spend.get(stage_id, (0.0, 0))


def expected_stage_io(state: RunState, stage_id: str) -> tuple[int, int]:
    """The largest ``(input_tokens, output_tokens)`` the stage has spent in one run so far, or ``(0, 0)``.

    Only stages whose usage format reports input and output separately have
    an entry; the estimate works the same way for every format.
    """
    return state.stage_max_io.get(stage_id, (0, 0))


def expected_iteration_spend(state: RunState, stage_ids: Iterable[str]) -> tuple[float, int]:
    """Sum of :func:`expected_stage_spend` over the stages of one iteration."""
    usd, tokens = 0.0, 0
    for sid in stage_ids:
        u, t = expected_stage_spend(state, sid)
        usd, tokens = usd + u, tokens + t
    return _r(usd), tokens


# ------------------------------------------------------------------ policies


@dataclass(frozen=True)
class BudgetInput:
    state: RunState
    now: datetime
    expected_usd: float = 0.0
    expected_tokens: int = 0
    #: Spend of other jobs charged to this budget (a lineage's children; see lineage.spend_for_root).
    lineage_usd: float = 0.0
    lineage_tokens: int = 0
    #: USD the job's other runs spent (``job_total_usd``).
    job_prior_usd: float = 0.0
    expected_input_tokens: int = 0
    expected_output_tokens: int = 0

    def counters(self) -> dict[str, Any]:
        """The evidence journaled with a decision (``stopped_budget.counters``)."""
        u = usage(self.state, self.now)
        out: dict[str, Any] = {
            "usd_total": _r(u.usd_total + self.lineage_usd),
            "tokens_total": u.tokens_total + self.lineage_tokens,
            "usd_last_hour": u.usd_last_hour,
            "expected_usd": _r(self.expected_usd),
            "expected_tokens": self.expected_tokens,
        }
        st = self.state
        if st.input_tokens_total or st.output_tokens_total or self.expected_input_tokens or self.expected_output_tokens:
            out["input_tokens_total"] = st.input_tokens_total
            out["output_tokens_total"] = st.output_tokens_total
            out["expected_input_tokens"] = self.expected_input_tokens
            out["expected_output_tokens"] = self.expected_output_tokens
        if self.lineage_usd or self.lineage_tokens:
            out["lineage_usd"] = _r(self.lineage_usd)
            out["lineage_tokens"] = self.lineage_tokens
        if self.job_prior_usd:
            out["job_usd_total"] = _r(u.usd_total + self.lineage_usd + self.job_prior_usd)
        return out


@dataclass(frozen=True)
class BudgetDecision:
    """A limit would be crossed. ``action`` is ``wait`` only for the hourly limit under ``on_hourly_limit: wait``."""

    reason: Reason
    limit: float
    counters: dict[str, Any] = field(default_factory=dict)
    action: Literal["stop", "wait"] = "stop"
    #: With ``action == "wait"``: when the hourly window has room again.
    until: datetime | None = None

    def stopped_budget_payload(self) -> dict[str, Any]:
        """The ``stopped_budget`` event payload."""
        return {"reason": self.reason, "limit": self.limit, "counters": dict(self.counters)}

    def error(self) -> LongrunError:
        """As an error (code ``budget_exhausted``), for callers that refuse work instead of journaling."""
        return LongrunError(f"budget {self.reason} limit {self.limit} would be crossed: {self.counters}", code="budget_exhausted")


def _crosses(current: float, expected: float, limit: float, eps: float = 0.0) -> bool:
    return current + expected > limit + eps or current >= limit - eps


class BudgetLimit:
    """One limit; ``a | b`` checks ``a`` first, then ``b``."""

    def __call__(self, inp: BudgetInput) -> BudgetDecision | None:  # pragma: no cover - interface
        raise NotImplementedError

    def __or__(self, other: BudgetLimit) -> BudgetLimit:
        return _Any((self, other))


@dataclass(frozen=True)
class _Any(BudgetLimit):
    parts: tuple[BudgetLimit, ...]

    def __call__(self, inp: BudgetInput) -> BudgetDecision | None:
        for part in self.parts:
            if (decision := part(inp)) is not None:
                return decision
        return None

    def __or__(self, other: BudgetLimit) -> BudgetLimit:
        return _Any(self.parts + (other,))


@dataclass(frozen=True)
class _Never(BudgetLimit):
    def __call__(self, inp: BudgetInput) -> BudgetDecision | None:
        return None


@dataclass(frozen=True)
class max_total_usd(BudgetLimit):
    """USD over the whole job, reported or computed (``budgets.total_usd``, or ``budgets.usd`` with reason ``usd``)."""

    limit: float
    reason: Literal["total_usd", "usd"] = "total_usd"

    def __call__(self, inp: BudgetInput) -> BudgetDecision | None:
        current = inp.state.usd_total + inp.lineage_usd
        if _crosses(current, inp.expected_usd, self.limit, _EPS):
            return BudgetDecision(self.reason, self.limit, inp.counters())
        return None


@dataclass(frozen=True)
class max_input_tokens(BudgetLimit):
    """Input tokens (cache reads included) of the stages whose usage format reports them."""

    limit: int

    def __call__(self, inp: BudgetInput) -> BudgetDecision | None:
        if _crosses(inp.state.input_tokens_total, inp.expected_input_tokens, self.limit):
            return BudgetDecision("input_tokens", self.limit, inp.counters())
        return None


@dataclass(frozen=True)
class max_output_tokens(BudgetLimit):
    """Output tokens (reasoning included) of the stages whose usage format reports them."""

    limit: int

    def __call__(self, inp: BudgetInput) -> BudgetDecision | None:
        if _crosses(inp.state.output_tokens_total, inp.expected_output_tokens, self.limit):
            return BudgetDecision("output_tokens", self.limit, inp.counters())
        return None


@dataclass(frozen=True)
class max_job_total_usd(BudgetLimit):
    """USD of this run plus every other run of the job (``budgets.job_total_usd``)."""

    limit: float

    def __call__(self, inp: BudgetInput) -> BudgetDecision | None:
        current = inp.state.usd_total + inp.lineage_usd + inp.job_prior_usd
        if _crosses(current, inp.expected_usd, self.limit, _EPS):
            return BudgetDecision("job_total_usd", self.limit, inp.counters())
        return None


@dataclass(frozen=True)
class max_tokens(BudgetLimit):
    limit: int

    def __call__(self, inp: BudgetInput) -> BudgetDecision | None:
        current = inp.state.tokens_total + inp.lineage_tokens
        if _crosses(current, inp.expected_tokens, self.limit):
            return BudgetDecision("tokens", self.limit, inp.counters())
        return None


@dataclass(frozen=True)
class max_usd_per_hour(BudgetLimit):
    """USD over the sliding 60-minute window ending at ``now`` (this job's own spend)."""

    limit: float

    def __call__(self, inp: BudgetInput) -> BudgetDecision | None:
        if _crosses(usd_in_window(inp.state, inp.now), inp.expected_usd, self.limit, _EPS):
            return BudgetDecision("per_hour_usd", self.limit, inp.counters())
        return None

    def wait_until(self, state: RunState, now: datetime, expected_usd: float = 0.0) -> datetime | None:
        """The earliest instant ``>= now`` at which the window has room for ``expected_usd``.

        Entries leave the window exactly 60 minutes after their timestamp, so
        the candidates are ``now`` and each window entry's ``ts + 60 min``.
        ``None`` when waiting cannot help: ``expected_usd`` alone exceeds the
        limit (or the limit is 0).
        """
        if expected_usd > self.limit + _EPS or self.limit <= 0:
            return None
        window = sorted((e for e in state.usage_log if _in_window(e.ts, now)), key=lambda e: e.ts)
        remaining = sum(e.usd for e in window)
        if not _crosses(remaining, expected_usd, self.limit, _EPS):
            return now
        for entry in window:
            remaining -= entry.usd
            if not _crosses(remaining, expected_usd, self.limit, _EPS):
                return max(now, entry.ts + HOUR)
        return None  # pragma: no cover - an empty window always has room (checked above)


class BudgetGovernor:
    """The job's budget policy, built from ``spec.budgets``.

    ``check`` returns ``None`` when the next unit of work fits, else a
    :class:`BudgetDecision`. Limits are checked in the order total USD,
    tokens, input tokens, output tokens, USD per hour, so a limit that waiting cannot lift wins over the
    hourly one. For ``per_hour_usd`` under ``on_hourly_limit: wait`` the
    decision's ``action`` is ``wait`` with ``until`` set — unless waiting
    cannot help (:meth:`wait_until` is ``None``), then it is ``stop``.
    """

    def __init__(self, budgets: Budgets) -> None:
        self.budgets = budgets
        self.hourly = max_usd_per_hour(budgets.per_hour_usd) if budgets.per_hour_usd is not None else None
        policy: BudgetLimit = _Never()
        if budgets.total_usd is not None:
            policy = policy | max_total_usd(budgets.total_usd)
        if budgets.usd is not None:
            policy = policy | max_total_usd(budgets.usd, reason="usd")
        if budgets.job_total_usd is not None:
            policy = policy | max_job_total_usd(budgets.job_total_usd)
        if budgets.tokens is not None:
            policy = policy | max_tokens(budgets.tokens)
        if budgets.input_tokens is not None:
            policy = policy | max_input_tokens(budgets.input_tokens)
        if budgets.output_tokens is not None:
            policy = policy | max_output_tokens(budgets.output_tokens)
        if self.hourly is not None:
            policy = policy | self.hourly
        self.policy = policy

    def check(
        self,
        state: RunState,
        now: datetime,
        expected_usd: float = 0.0,
        expected_tokens: int = 0,
        *,
        lineage_usd: float = 0.0,
        lineage_tokens: int = 0,
        job_prior_usd: float = 0.0,
        expected_input_tokens: int = 0,
        expected_output_tokens: int = 0,
    ) -> BudgetDecision | None:
        inp = BudgetInput(
            state,
            now,
            expected_usd,
            expected_tokens,
            lineage_usd,
            lineage_tokens,
            job_prior_usd,
            expected_input_tokens,
            expected_output_tokens,
        )
        decision = self.policy(inp)
        if decision is None or decision.reason != "per_hour_usd" or self.budgets.on_hourly_limit != "wait":
            return decision
        until = self.wait_until(state, now, expected_usd)
        if until is None:
            return decision
        return BudgetDecision(decision.reason, decision.limit, decision.counters, action="wait", until=until)

    def wait_until(self, state: RunState, now: datetime, expected_usd: float = 0.0) -> datetime | None:
        """For ``on_hourly_limit: wait``: when the hourly window has room again (see :class:`max_usd_per_hour`).

        ``None`` when the job has no hourly limit or waiting cannot help.
        """
        if self.hourly is None:
            return None
        return self.hourly.wait_until(state, now, expected_usd)
