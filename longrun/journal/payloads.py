"""The payload of every journal event type: frozen models, every field declared.

Payloads read with ``extra="allow"`` (a line from a newer writer of the same
version still reads) but are written strictly: :func:`longrun.journal.events.build_event`
refuses a field no model declares. A field added to a type after it was
first written is optional and listed in ``omit_if_none``, so lines of writers
that do not set it keep their exact bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer, model_validator

JOB_ID_PATTERN = r"^[0-9a-f]{12}$"

StopReason = Literal["max_iterations", "max_wall_time", "stop_file", "no_progress", "interrupted"]


class FrozenDict(dict):
    """A read-only dict: equal to, and JSON-serialisable like, a plain dict; picklable."""

    __slots__ = ()

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("RunState mappings are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]
    __ior__ = _readonly  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))


def freeze(value: Any) -> Any:
    """Deep-freeze JSON-like data: dicts become FrozenDict, lists become tuples."""
    if isinstance(value, Mapping):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def format_ts(ts: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a ``Z`` suffix."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _to_utc(v: datetime) -> datetime:
    return v.astimezone(UTC)


#: A timestamp in a payload: read as UTC, written as :func:`format_ts` writes it.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc), PlainSerializer(format_ts, return_type=str)]


class Payload(BaseModel):
    """Base of every payload: frozen, tolerant of fields from newer writers."""

    model_config = ConfigDict(extra="allow", frozen=True, defer_build=True)

    #: Optional fields added to a type after it was first written: not written while None.
    omit_if_none: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _freeze_mappings(self) -> Payload:
        """Mapping fields become read-only all the way down (a payload is a record in the state)."""
        for name, value in self.__dict__.items():
            if isinstance(value, dict) and not isinstance(value, FrozenDict):
                object.__setattr__(self, name, freeze(value))
        return self


class Usage(Payload):
    """A stage's spend. The fields after ``model`` come from an agent usage format and are omitted while None."""

    usd: float = Field(0.0, ge=0)
    tokens: int = Field(0, ge=0)
    model: str | None = None
    input_tokens: int | None = Field(None, ge=0, description="Prompt tokens, cache reads and writes included.")
    output_tokens: int | None = Field(None, ge=0, description="Output tokens, reasoning included.")
    cache_read_tokens: int | None = Field(None, ge=0)
    cache_write_tokens: int | None = Field(None, ge=0)
    usd_source: Literal["reported", "computed", "none"] | None = Field(
        None, description="reported by the tool, computed from the price table, or none (no usage in the output)."
    )
    prices_version: str | None = Field(None, description="The price table version (or 'spec') of a computed usd.")
    format: str | None = Field(None, description="The usage format read (claude-stream-json …).")

    omit_if_none: ClassVar[frozenset[str]] = frozenset(
        {"input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "usd_source", "prices_version", "format"}
    )


class JobRegistered(Payload):
    """The first event of a run's journal. ``job_id`` is the run's id; ``job`` the job it is a run of."""

    job_id: str = Field(pattern=JOB_ID_PATTERN)
    name: str
    spec_sha256: str
    source: str | None = None
    root: str
    job: str | None = Field(
        None, pattern=JOB_ID_PATTERN, description="The job this run belongs to (absent: the job's own journal)."
    )
    run_key: str | None = Field(None, description="The intended run: a cron tick's time, an idempotency key, or manual:<id>.")
    trigger: str | None = Field(None, description="What opened the run: schedule, key, flow-run or manual.")
    scheduled_for: str | None = Field(None, description="A cron tick's scheduled time (ISO 8601, UTC).")

    omit_if_none: ClassVar[frozenset[str]] = frozenset({"job", "run_key", "trigger", "scheduled_for"})


class RunStarted(Payload):
    run_id: str
    flow_run_id: str | None = None
    resumed: bool = False
    pid: int | None = Field(None, description="The engine's process id (the duplicate-run guard checks it is alive).")
    host: str | None = Field(None, description="The engine's host name.")
    sandbox: Literal["bwrap", "bwrap-no-network", "none"] | None = Field(
        None, description="How stages and command gates run: under bubblewrap (with or without network), or not sandboxed."
    )
    sandbox_waiver: str | None = Field(
        None, description="sandbox none in strict mode: the waiver that allowed it (approved_by and reason)."
    )

    omit_if_none: ClassVar[frozenset[str]] = frozenset({"pid", "host", "sandbox", "sandbox_waiver"})


class IterationStarted(Payload):
    iteration: int = Field(ge=1)
    start_tree: str | None = None


class StageStarted(Payload):
    iteration: int = Field(ge=1)
    stage: str
    attempt: int = Field(1, ge=1)
    phase: str | None = None
    model: str


class StageFinished(Payload):
    iteration: int = Field(ge=1)
    stage: str
    exit_code: int | None
    timed_out: bool = False
    duration_s: float = Field(ge=0)
    phase: str | None = None
    model: str
    attempts: int = Field(1, ge=0, description="0 when the stage was skipped (a dependency failed)")
    usage: Usage = Field(default_factory=Usage)
    error: str | None = Field(None, description="Why the command did not run or was killed, if it did not exit by itself.")
    out_of_scope: tuple[str, ...] | None = Field(
        None, description="Paths changed outside scope_paths, seen right after this stage."
    )
    tree: str | None = Field(
        None, description="workspace.repo jobs: the workspace's git tree right after this stage (it travels as a patch)."
    )
    patch_sha256: str | None = Field(
        None, description="sha256 of <iter>/stages/<stage>.patch: the iteration's changes up to and with this stage."
    )

    omit_if_none: ClassVar[frozenset[str]] = frozenset({"error", "out_of_scope", "tree", "patch_sha256"})


class GateEvaluated(Payload):
    iteration: int = Field(ge=1)
    gate: str
    kind: str
    required: bool
    passed: bool
    evidence: dict[str, Any] = Field(default_factory=dict)


class CheckpointWritten(Payload):
    iteration: int = Field(ge=1)
    dir: str
    files: dict[str, str] = Field(default_factory=dict, description="name → sha256")
    end_tree: str | None = Field(
        None, description="The workspace's git tree at the end of the iteration (what patch.diff leads to from start_tree)."
    )

    omit_if_none: ClassVar[frozenset[str]] = frozenset({"end_tree"})


class IterationFinished(Payload):
    iteration: int = Field(ge=1)
    gates_passed: bool = Field(description="All required gates passed.")
    fingerprint: str


class StopRequested(Payload):
    by: str
    reason: str


class RunCompleted(Payload):
    iteration: int = Field(ge=0)
    reason: str


class RunStopped(Payload):
    reason: StopReason
    detail: dict[str, Any] = Field(default_factory=dict)


class RunFailed(Payload):
    code: str
    message: str


# -- governance: budget (E4), gate-failure policy (E6), approvals (G3) ----------

BudgetReason = Literal["total_usd", "usd", "tokens", "input_tokens", "output_tokens", "per_hour_usd", "job_total_usd"]


class StoppedBudget(Payload):
    """A budget limit would be crossed: the run stops (status ``STOPPED_BUDGET``)."""

    reason: BudgetReason
    limit: float
    counters: dict[str, Any] = Field(
        default_factory=dict,
        description="usd_total, tokens_total, usd_last_hour, expected_usd, expected_tokens",
    )


class BudgetWait(Payload):
    """The hourly window is full and ``on_hourly_limit: wait``: the run sleeps until ``until``."""

    until: UtcDatetime
    reason: BudgetReason = "per_hour_usd"
    counters: dict[str, Any] = Field(default_factory=dict)


class RateLimited(Payload):
    """A stage attempt's output reported a rate limit: the attempt's spend counts, and the run waits
    until ``until`` (the reported reset) without counting an iteration, then runs the stage again."""

    iteration: int = Field(ge=1)
    stage: str
    attempt: int = Field(ge=1)
    until: UtcDatetime
    resets_at_reported: bool = Field(True, description="False when the tool gave no reset time and a default wait applies.")
    kind: str | None = Field(None, description="The tool's name for the limit (five_hour, usage_limit, quota …).")
    message: str = ""
    usage: Usage = Field(default_factory=Usage)


def escalation_step(gate: str) -> str:
    """The approval step that resolves an escalation of ``gate``: ``escalate:<gate>``.

    The colon cannot occur in a spec's approval step ids, so the two never collide.
    """
    return f"escalate:{gate}"


class Escalated(Payload):
    """A gate failed under ``escalate``: the run waits for a human (``WAITING_APPROVAL``)."""

    iteration: int = Field(ge=1)
    gate: str
    reason: str
    step: str = Field("", description="The approval step that resolves it; default escalation_step(gate).")

    @model_validator(mode="before")
    @classmethod
    def _default_step(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("step") and isinstance(data.get("gate"), str):
            data = {**data, "step": escalation_step(data["gate"])}
        return data


class GateSkipped(Payload):
    """A failed gate was skipped by policy; a skipped required gate does not block completion."""

    iteration: int = Field(ge=1)
    gate: str
    reason: str


class ApprovalTimeout(Payload):
    """Nobody decided within the approval's timeout; the job waits (resume it after approving)."""

    step: str
    iteration: int | None = None
    timeout_s: float | None = None


class ChildSpawned(Payload):
    """A stage wrote a child spec into ``LONGRUN_SPAWN_DIR``; it was validated and registered."""

    iteration: int = Field(ge=1)
    child_job_id: str
    name: str
    generation: int = Field(ge=1)
    source: str | None = None


class PatchesApplied(Payload):
    """``longrun apply``: a worktree job's exported patches were applied to the main tree with ``git am``."""

    repo: str = Field(description="The main tree the patches went to.")
    patches: tuple[str, ...] = Field(description="Patch file names, in the order applied.")
    head: str = Field(pattern=r"^[0-9a-f]{40}$", description="The main tree's HEAD after git am.")


class Pruned(Payload):
    """``longrun prune`` removed checkpoint iterations (kept in the evidence bundle) and/or the job's worktree."""

    iterations: tuple[int, ...] = Field(description="Checkpoint iterations removed from disk.")
    worktree: str | None = Field(None, description="The worktree removed (its branch is kept).")
    by: str | None = None


# -- a workspace cloned from workspace.repo (docs/scale-out.md)


class WorkspaceMaterialized(Payload):
    """The run's workspace was checked, or cloned and rebuilt from the checkpointed patches."""

    repo: str
    commit: str = Field(pattern=r"^[0-9a-f]{40}$", description="The base commit (ref as first cloned; pinned from then on).")
    tree: str = Field(description="The workspace's tree once materialised: where the next (or interrupted) iteration starts.")
    cloned: bool = Field(description="True: cloned here and the patches replayed; false: the existing workspace was checked.")
    iterations: tuple[int, ...] = Field(default=(), description="Iterations whose patch.diff was applied (in order).")
    reset: bool = Field(False, description="An interrupted iteration's partial changes were undone (back to its start tree).")


class WorkspacePushed(Payload):
    """``workspace.push_branch``: an iteration's tree was committed and pushed."""

    iteration: int = Field(ge=1)
    branch: str
    commit: str = Field(pattern=r"^[0-9a-f]{40}$")


class WorkspacePushFailed(Payload):
    """``workspace.push_branch``: the push of an iteration failed; the run goes on."""

    iteration: int = Field(ge=1)
    branch: str
    error: str = Field(description="'<code>: <message>'.")


class _ApprovalPayload(Payload):
    step: str = Field(min_length=1)
    iteration: int | None = Field(None, ge=0)


class ApprovalRequested(_ApprovalPayload):
    """The run waits at approval ``step`` (status ``WAITING_APPROVAL``)."""

    key: str | None = Field(None, description="The pause key (unique per step, iteration and request).")
    flow_run_id: str | None = Field(None, description="The flow run that waits.")
    api_url: str | None = Field(None, description="The Prefect API that flow run talks to.")
    timeout_s: float | None = None
    mode: Literal["pause", "suspend"] | None = None

    omit_if_none: ClassVar[frozenset[str]] = frozenset({"key", "flow_run_id", "api_url", "timeout_s", "mode"})


class _Decision(_ApprovalPayload):
    approver: str = Field(min_length=1)
    comment: str | None = None


class Approved(_Decision):
    pass


class Rejected(_Decision):
    pass


# -- evidence (C3): bundle built, uploaded, upload failed; never change a job's status


class EvidenceBuilt(Payload):
    """``.maestro/evidence/<jobId>.tar.gz`` and its manifest were (re)written."""

    manifest: str = Field(description="Path of the manifest, relative to the job root.")
    bundle: str = Field(description="Path of the tar.gz, relative to the job root.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the tar.gz.")
    size: int = Field(ge=0)
    files: int = Field(ge=0, description="Number of files in the bundle.")
    built_from_seq: int | None = Field(None, ge=0, description="Last journal seq the bundle holds.")
    signature: str | None = Field(
        None, description="The manifest's DSSE envelope, relative to the job root (evidence.signing_key)."
    )

    omit_if_none: ClassVar[frozenset[str]] = frozenset({"signature"})


class EvidenceUploaded(Payload):
    uri: str = Field(description="Where the tar.gz now is (s3://bucket/key, file://...).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    manifest_uri: str | None = None


class EvidenceUploadFailed(Payload):
    uri: str
    error: str = Field(description="'<code>: <message>' of the last error.")
    retryable: bool
    sha256: str | None = None


#: type name → payload class: the one list of event types.
PAYLOADS: dict[str, type[Payload]] = {
    "job_registered": JobRegistered,
    "run_started": RunStarted,
    "iteration_started": IterationStarted,
    "stage_started": StageStarted,
    "stage_finished": StageFinished,
    "gate_evaluated": GateEvaluated,
    "checkpoint_written": CheckpointWritten,
    "iteration_finished": IterationFinished,
    "stop_requested": StopRequested,
    "run_completed": RunCompleted,
    "run_stopped": RunStopped,
    "run_failed": RunFailed,
    "stopped_budget": StoppedBudget,
    "budget_wait": BudgetWait,
    "rate_limited": RateLimited,
    "escalated": Escalated,
    "gate_skipped": GateSkipped,
    "child_spawned": ChildSpawned,
    "approval_timeout": ApprovalTimeout,
    "approval_requested": ApprovalRequested,
    "approved": Approved,
    "rejected": Rejected,
    "evidence_built": EvidenceBuilt,
    "evidence_uploaded": EvidenceUploaded,
    "evidence_upload_failed": EvidenceUploadFailed,
    "patches_applied": PatchesApplied,
    "pruned": Pruned,
    "workspace_materialized": WorkspaceMaterialized,
    "workspace_pushed": WorkspacePushed,
    "workspace_push_failed": WorkspacePushFailed,
}
