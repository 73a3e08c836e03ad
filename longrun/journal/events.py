"""Frozen, versioned journal events.

One journal line is one JSON object::

    {"seq": 7, "type": "stage_finished", "version": "job_event_v1",
     "ts": "2025-01-01T00:00:00.000000Z", "job_id": "0123456789ab",
     "payload": {...}}

Each event type is one envelope class (``type: Literal[...]``) carrying one
payload class; :data:`EventAdapter` parses a raw dict through a union
discriminated on ``type``. Payloads use ``extra="allow"`` so that fields a
newer writer adds within the same version do not break older readers.

Versioning: lines are read through :func:`parse_event`, which upcasts older
versions step by step (``_UPCASTERS``: version → (next version, step)) until
the current :data:`EVENT_VERSION`; a version with no path raises
:class:`EventVersionUnsupported`. To introduce ``job_event_v2``: set
``EVENT_VERSION = "job_event_v2"``, change the envelope's version literal and
register ``_UPCASTERS["job_event_v1"] = ("job_event_v2", v1_to_v2)``; golden
v1 journals in ``tests/fixtures/journals`` keep pinning the old shape.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from longrun.errors import EventVersionUnsupported, JournalCorrupt

EVENT_VERSION = "job_event_v1"

JOB_ID_PATTERN = r"^[0-9a-f]{12}$"

StopReason = Literal["max_iterations", "max_wall_time", "stop_file", "no_progress"]


def format_ts(ts: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a ``Z`` suffix."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- payloads


class Payload(BaseModel):
    """Base of every payload: frozen, tolerant of fields from newer writers."""

    model_config = ConfigDict(extra="allow", frozen=True)

    #: Optional fields added to a type after it was first written: not written while None.
    omit_if_none: ClassVar[frozenset[str]] = frozenset()


class Usage(Payload):
    usd: float = Field(0.0, ge=0)
    tokens: int = Field(0, ge=0)
    model: str | None = None


class JobRegistered(Payload):
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    name: str
    spec_sha256: str
    source: str | None = None
    root: str


class RunStarted(Payload):
    run_id: str
    flow_run_id: str | None = None
    resumed: bool = False
    pid: int | None = Field(None, description="The engine's process id (the duplicate-run guard checks it is alive).")
    host: str | None = Field(None, description="The engine's host name.")

    omit_if_none: ClassVar[frozenset[str]] = frozenset({"pid", "host"})


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
    out_of_scope: list[str] | None = Field(None, description="Paths changed outside scope_paths, seen right after this stage.")

    omit_if_none: ClassVar[frozenset[str]] = frozenset({"error", "out_of_scope"})


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

BudgetReason = Literal["total_usd", "tokens", "per_hour_usd"]


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

    until: AwareDatetime
    reason: BudgetReason = "per_hour_usd"
    counters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("until")
    @classmethod
    def _until_utc(cls, v: datetime) -> datetime:
        return v.astimezone(UTC)

    @field_serializer("until")
    def _ser_until(self, v: datetime) -> str:
        return format_ts(v)


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
    patches: list[str] = Field(description="Patch file names, in the order applied.")
    head: str = Field(pattern=r"^[0-9a-f]{40}$", description="The main tree's HEAD after git am.")


class Pruned(Payload):
    """``longrun prune`` removed checkpoint iterations (kept in the evidence bundle) and/or the job's worktree."""

    iterations: list[int] = Field(description="Checkpoint iterations removed from disk.")
    worktree: str | None = Field(None, description="The worktree removed (its branch is kept).")
    by: str | None = None


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


# --------------------------------------------------------------------------- envelopes


class Event(BaseModel):
    """The envelope every journal line shares; subclasses fix ``type`` and ``payload``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int = Field(ge=1)
    type: str
    version: Literal["job_event_v1"] = EVENT_VERSION
    ts: AwareDatetime
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    payload: Payload

    @field_validator("ts")
    @classmethod
    def _to_utc(cls, v: datetime) -> datetime:
        return v.astimezone(UTC)

    @field_serializer("ts")
    def _ser_ts(self, v: datetime) -> str:
        return format_ts(v)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict of this event (what a journal line holds).

        Optional fields added after a type was first written
        (``Payload.omit_if_none``) are left out while they are None, so a line
        from a writer that did not know them reads back byte for byte.
        """
        out = self.model_dump(mode="json")
        payload = out["payload"]
        for name in type(self.payload).omit_if_none:
            if payload.get(name, 0) is None:
                del payload[name]
        return out

    def to_line(self) -> bytes:
        """One compact JSON line, UTF-8, ending in ``\\n``."""
        text = json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))
        return (text + "\n").encode("utf-8")


class JobRegisteredEvent(Event):
    type: Literal["job_registered"] = "job_registered"
    payload: JobRegistered


class RunStartedEvent(Event):
    type: Literal["run_started"] = "run_started"
    payload: RunStarted


class IterationStartedEvent(Event):
    type: Literal["iteration_started"] = "iteration_started"
    payload: IterationStarted


class StageStartedEvent(Event):
    type: Literal["stage_started"] = "stage_started"
    payload: StageStarted


class StageFinishedEvent(Event):
    type: Literal["stage_finished"] = "stage_finished"
    payload: StageFinished


class GateEvaluatedEvent(Event):
    type: Literal["gate_evaluated"] = "gate_evaluated"
    payload: GateEvaluated


class CheckpointWrittenEvent(Event):
    type: Literal["checkpoint_written"] = "checkpoint_written"
    payload: CheckpointWritten


class IterationFinishedEvent(Event):
    type: Literal["iteration_finished"] = "iteration_finished"
    payload: IterationFinished


class StopRequestedEvent(Event):
    type: Literal["stop_requested"] = "stop_requested"
    payload: StopRequested


class RunCompletedEvent(Event):
    type: Literal["run_completed"] = "run_completed"
    payload: RunCompleted


class RunStoppedEvent(Event):
    type: Literal["run_stopped"] = "run_stopped"
    payload: RunStopped


class RunFailedEvent(Event):
    type: Literal["run_failed"] = "run_failed"
    payload: RunFailed


class StoppedBudgetEvent(Event):
    type: Literal["stopped_budget"] = "stopped_budget"
    payload: StoppedBudget


class BudgetWaitEvent(Event):
    type: Literal["budget_wait"] = "budget_wait"
    payload: BudgetWait


class EscalatedEvent(Event):
    type: Literal["escalated"] = "escalated"
    payload: Escalated


class GateSkippedEvent(Event):
    type: Literal["gate_skipped"] = "gate_skipped"
    payload: GateSkipped


class ApprovalTimeoutEvent(Event):
    type: Literal["approval_timeout"] = "approval_timeout"
    payload: ApprovalTimeout


class ChildSpawnedEvent(Event):
    type: Literal["child_spawned"] = "child_spawned"
    payload: ChildSpawned


class PatchesAppliedEvent(Event):
    type: Literal["patches_applied"] = "patches_applied"
    payload: PatchesApplied


class PrunedEvent(Event):
    type: Literal["pruned"] = "pruned"
    payload: Pruned


class ApprovalRequestedEvent(Event):
    type: Literal["approval_requested"] = "approval_requested"
    payload: ApprovalRequested


class ApprovedEvent(Event):
    type: Literal["approved"] = "approved"
    payload: Approved


class RejectedEvent(Event):
    type: Literal["rejected"] = "rejected"
    payload: Rejected


# -- evidence (C3): bundle built, uploaded, upload failed ----------------------
# These never change a job's status; RunState.evidence keeps the latest of each.


class EvidenceBuilt(Payload):
    """``.maestro/evidence/<jobId>.tar.gz`` and its manifest were (re)written."""

    manifest: str = Field(description="Path of the manifest, relative to the job root.")
    bundle: str = Field(description="Path of the tar.gz, relative to the job root.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the tar.gz.")
    size: int = Field(ge=0)
    files: int = Field(ge=0, description="Number of files in the bundle.")
    built_from_seq: int | None = Field(None, ge=0, description="Last journal seq the bundle holds.")


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


class EvidenceBuiltEvent(Event):
    type: Literal["evidence_built"] = "evidence_built"
    payload: EvidenceBuilt


class EvidenceUploadedEvent(Event):
    type: Literal["evidence_uploaded"] = "evidence_uploaded"
    payload: EvidenceUploaded


class EvidenceUploadFailedEvent(Event):
    type: Literal["evidence_upload_failed"] = "evidence_upload_failed"
    payload: EvidenceUploadFailed


_EVENT_CLASSES: tuple[type[Event], ...] = (
    JobRegisteredEvent,
    RunStartedEvent,
    IterationStartedEvent,
    StageStartedEvent,
    StageFinishedEvent,
    GateEvaluatedEvent,
    CheckpointWrittenEvent,
    IterationFinishedEvent,
    StopRequestedEvent,
    RunCompletedEvent,
    RunStoppedEvent,
    RunFailedEvent,
    StoppedBudgetEvent,
    BudgetWaitEvent,
    EscalatedEvent,
    GateSkippedEvent,
    ChildSpawnedEvent,
    ApprovalTimeoutEvent,
    ApprovalRequestedEvent,
    ApprovedEvent,
    RejectedEvent,
    EvidenceBuiltEvent,
    EvidenceUploadedEvent,
    EvidenceUploadFailedEvent,
    PatchesAppliedEvent,
    PrunedEvent,
)

#: type name → envelope class.
EVENT_TYPES: Mapping[str, type[Event]] = {c.model_fields["type"].default: c for c in _EVENT_CLASSES}

#: type name → payload class.
PAYLOAD_TYPES: Mapping[str, type[Payload]] = {name: cls.model_fields["payload"].annotation for name, cls in EVENT_TYPES.items()}

AnyEvent = Annotated[Union[_EVENT_CLASSES], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
EventAdapter: TypeAdapter[Event] = TypeAdapter(AnyEvent)


# --------------------------------------------------------------------------- versions

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

#: old version → (next version, step turning a raw event of old into next).
#: Empty while v1 is the only version; see the module docstring.
_UPCASTERS: dict[str, tuple[str, Upcaster]] = {}


def known_versions() -> frozenset[str]:
    """Every version :func:`parse_event` can read."""
    return frozenset({EVENT_VERSION, *_UPCASTERS})


def upcast(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Lift a raw event dict to :data:`EVENT_VERSION`, one registered step at a time.

    Raises :class:`EventVersionUnsupported` for a version with no path and
    :class:`JournalCorrupt` when the version field is missing.
    """
    event = dict(raw)
    seen: set[str] = set()
    while (version := event.get("version")) != EVENT_VERSION:
        if not isinstance(version, str):
            raise JournalCorrupt(f"event has no valid version field (got {version!r})")
        step = _UPCASTERS.get(version)
        if step is None or version in seen:
            raise EventVersionUnsupported(
                f"event version {version!r} is not supported (this longrun reads "
                f"{', '.join(sorted(known_versions()))}); upgrade longrun"
            )
        seen.add(version)
        next_version, fn = step
        event = {**fn(event), "version": next_version}
    return event


def parse_event(raw: Mapping[str, Any]) -> Event:
    """Validate one raw journal record into its typed :class:`Event`.

    Raises :class:`EventVersionUnsupported` for a version with no upcast path
    and :class:`JournalCorrupt` for an unknown type or an invalid record.
    """
    if not isinstance(raw, Mapping):
        raise JournalCorrupt(f"event must be a JSON object, got {type(raw).__name__}")
    event = upcast(raw)
    kind = event.get("type")
    if kind not in EVENT_TYPES:
        raise JournalCorrupt(f"unknown event type {kind!r} for version {EVENT_VERSION} (known: {', '.join(sorted(EVENT_TYPES))})")
    try:
        return EventAdapter.validate_python(event)
    except ValidationError as exc:
        raise JournalCorrupt(f"invalid {kind} event: {_summarise(exc)}") from exc


def build_event(
    type: str,
    payload: Mapping[str, Any] | Payload,
    *,
    seq: int,
    job_id: str,
    ts: datetime,
) -> Event:
    """Build and validate a current-version event (what the journal appends).

    A bad event here is a caller's bug, not a corrupt journal, so this raises
    ``ValueError`` for an unknown ``type``, pydantic's ``ValidationError`` (a
    ``ValueError``) for invalid fields, and ``TypeError`` for a payload model
    of another type.
    """
    cls = EVENT_TYPES.get(type)
    if cls is None:
        raise ValueError(f"unknown event type {type!r} (known: {', '.join(sorted(EVENT_TYPES))})")
    if isinstance(payload, Payload):
        expected = PAYLOAD_TYPES[type]
        if not isinstance(payload, expected):
            raise TypeError(f"{type} takes a {expected.__name__} payload, not {payload.__class__.__name__}")
        payload = payload.model_dump(mode="json")
    declared = PAYLOAD_TYPES[type].model_fields
    unknown = sorted(set(payload) - set(declared))
    if unknown:
        raise ValueError(f"{type}: undeclared payload field(s) {', '.join(unknown)}; declare them in its payload model")
    return cls.model_validate(
        {"seq": seq, "type": type, "version": EVENT_VERSION, "ts": ts, "job_id": job_id, "payload": dict(payload)}
    )


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if p not in EVENT_TYPES)
        parts.append(f"{loc or '$'}: {err['msg']}")
    return "; ".join(parts)


__all__ = [
    "EVENT_TYPES",
    "EVENT_VERSION",
    "PAYLOAD_TYPES",
    "AnyEvent",
    "ApprovalRequested",
    "ApprovalRequestedEvent",
    "Approved",
    "ApprovedEvent",
    "BudgetReason",
    "BudgetWait",
    "BudgetWaitEvent",
    "CheckpointWritten",
    "CheckpointWrittenEvent",
    "Escalated",
    "EscalatedEvent",
    "Event",
    "EventAdapter",
    "EvidenceBuilt",
    "EvidenceBuiltEvent",
    "EvidenceUploadFailed",
    "EvidenceUploadFailedEvent",
    "EvidenceUploaded",
    "EvidenceUploadedEvent",
    "GateEvaluated",
    "GateEvaluatedEvent",
    "GateSkipped",
    "GateSkippedEvent",
    "IterationFinished",
    "IterationFinishedEvent",
    "IterationStarted",
    "IterationStartedEvent",
    "JobRegistered",
    "JobRegisteredEvent",
    "Payload",
    "Rejected",
    "RejectedEvent",
    "RunCompleted",
    "RunCompletedEvent",
    "RunFailed",
    "RunFailedEvent",
    "RunStarted",
    "RunStartedEvent",
    "RunStopped",
    "RunStoppedEvent",
    "StageFinished",
    "StageFinishedEvent",
    "StageStarted",
    "StageStartedEvent",
    "StopReason",
    "StopRequested",
    "StopRequestedEvent",
    "StoppedBudget",
    "StoppedBudgetEvent",
    "Upcaster",
    "Usage",
    "build_event",
    "escalation_step",
    "format_ts",
    "known_versions",
    "parse_event",
    "upcast",
]
