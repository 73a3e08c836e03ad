"""Which run a start continues or opens, and what keeps two runs of one job apart.

A job is a definition; each intended run of it (a cron tick, a keyed trigger,
a ``longrun run`` of a job whose last run is over) is a run with its own
journal, counters, checkpoints and evidence (:mod:`longrun.journal.runs`).

* With a key, the run is the key's run: opened by the first start, continued
  (or reported as over) by every later one.
* Without a key, a start continues the job's last run unless it is over
  (COMPLETED or REJECTED); then it opens a new one.
* At most one run of a job is live at a time: a start is refused with
  ``job_already_running`` while another run runs, or waits for an approval
  (a paused run holds the job, whatever Prefect's concurrency slots say).

The caller holds the job's start lock (:class:`longrun.journal.runs.JobLock`)
from :func:`choose_run` until the run has journaled ``run_started``.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from longrun.engine.ports import LivenessPort
from longrun.errors import JobNotFound, LongrunError
from longrun.journal.local import Journal
from longrun.journal.payloads import RunStarted
from longrun.journal.registry import JobRecord, define, live_local_pid, open_run
from longrun.journal.runs import FIRST_RUN_KEY, OVER, RunClaim, claim_run, list_runs, run_id_for
from longrun.journal.state import RunState
from longrun.spec.loader import LoadedSpec
from longrun.storage.paths import JobPaths


@dataclass(frozen=True)
class Trigger:
    """What asks for a run: its key (None: continue the last run, or open a manual one) and kind."""

    key: str | None = None
    kind: str = "manual"
    scheduled_for: str | None = None


@dataclass(frozen=True)
class RunChoice:
    record: JobRecord
    #: This start opened the run (False: it continues one).
    opened: bool
    #: USD and tokens the job's other runs spent (``budgets.job_total_usd``).
    prior_usd: float
    prior_tokens: int
    #: stage → the largest (usd, tokens) it spent in any other run (the budget check's first estimate).
    prior_stage_spend: dict[str, tuple[float, int]]


def alive(state: RunState, liveness: LivenessPort, own_flow_run: str | None = None) -> str | None:
    """Why a run counts as live (a description), or None.

    RUNNING alone is not live: a SIGKILLed engine leaves it behind. On this
    host the pid of the last ``run_started`` must be alive; elsewhere the
    orchestrator must still see its flow run as running or paused.
    """
    started: RunStarted | None = state.last_run
    if state.status not in ("RUNNING", "APPROVED") or started is None:
        return None
    if started.pid is not None and started.host == socket.gethostname():
        pid = live_local_pid(started)
        if pid is None or pid == os.getpid():
            return None
        return f"pid {pid} on {started.host}, flow run {started.flow_run_id}"
    if started.flow_run_id and started.flow_run_id != own_flow_run:
        return liveness.flow_run_alive(started.flow_run_id)
    return None


def holds_job(state: RunState, liveness: LivenessPort, own_flow_run: str | None = None) -> str | None:
    """Why this run keeps another run of its job from starting: it is live, or waits for an approval."""
    if state.status == "WAITING_APPROVAL":
        return f"waiting for approval {state.pending_approval or state.stop_reason!r}"
    return alive(state, liveness, own_flow_run)


def choose_run(
    loaded: LoadedSpec,
    root: Path,
    trigger: Trigger,
    liveness: LivenessPort,
    *,
    run_id: str | None = None,
    own_flow_run: str | None = None,
    force: bool = False,
) -> RunChoice:
    """The run this start works on (opened if new); refuses while another run of the job holds it."""
    job_id = loaded.job_id
    define(loaded, root)
    runs = list_runs(root, job_id)
    states = {c.run_id: _state(root, c) for c in runs}
    target: RunClaim | None = None
    key = trigger.key
    if run_id is not None:
        target = next((c for c in runs if c.run_id == run_id), None)
        if target is None:
            raise JobNotFound(f"job {loaded.spec.name} ({job_id}) has no run {run_id}")
    elif key is not None:
        rid = run_id_for(job_id, key)
        target = next((c for c in runs if c.run_id == rid), None)
    elif runs and states[runs[-1].run_id].status not in OVER:
        target = runs[-1]
    if not force:
        for c in runs:
            if target is not None and c.run_id == target.run_id:
                continue  # its own liveness is the engine's live-run guard
            if (why := holds_job(states[c.run_id], liveness, own_flow_run)) is not None:
                raise LongrunError(
                    f"{loaded.spec.name} ({job_id}): run {c.run_id} is {why}; a job runs one run at a time "
                    f"(decide or stop that run first: longrun status {job_id}@{c.run_id})",
                    code="job_already_running",
                )
    opened = False
    if target is None and key is None and not runs:
        # A job's first run without a key is stored under the job's own id, as every run was before runs.
        target, opened = first_run(job_id), True
    elif target is None:
        key = key if key is not None else f"manual:{uuid.uuid4().hex[:12]}"
        target, opened = claim_run(root, job_id, key, trigger=trigger.kind, scheduled_for=trigger.scheduled_for)
    record = open_run(loaded, root, target)
    others = [states[c.run_id] for c in runs if c.run_id != target.run_id]
    spend: dict[str, tuple[float, int]] = {}
    for st in others:
        for stage, (usd, tokens) in st.stage_max_spend.items():
            u, t = spend.get(stage, (0.0, 0))
            spend[stage] = (max(u, usd), max(t, tokens))
    return RunChoice(
        record=record,
        opened=opened,
        prior_usd=round(sum(s.usd_total for s in others), 9),
        prior_tokens=sum(s.tokens_total for s in others),
        prior_stage_spend=spend,
    )


def first_run(job_id: str) -> RunClaim:
    return RunClaim(job_id, job_id, FIRST_RUN_KEY, "manual", "")


def _state(root: Path, claim: RunClaim) -> RunState:
    return Journal(JobPaths(root, claim.run_id).events_file).state()
