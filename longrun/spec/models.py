"""Job spec v1: frozen, versioned pydantic models.

Every field of SPEC S1 is modelled here. ``extra="forbid"`` everywhere: an
unknown key is an error, never silently ignored.

The JSON Schema in ``jobspecs/job.schema.json`` is generated from these models
(``python -m longrun.spec.schema``) and a test fails when the two drift.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from longrun.spec.checks import cross_check
from longrun.spec.cron import check_cron, check_timezone

SPEC_VERSION = "longrun/v1"

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"

Phase = Literal["search", "plan", "execute", "debug", "verify"]
PHASES: tuple[str, ...] = ("search", "plan", "execute", "debug", "verify")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_relative_path(value: str) -> str:
    """A spec path is relative, POSIX-style and never climbs out with ``..``.

    Symlinks are checked at run time, when the path is resolved against the
    workspace (see ``longrun.storage.paths``).
    """
    if not value or not value.strip():
        raise ValueError("must not be empty")
    if "\x00" in value:
        raise ValueError("must not contain NUL")
    p = PurePosixPath(value.replace("\\", "/"))
    if p.is_absolute() or re.match(r"^[A-Za-z]:", value):
        raise ValueError(f"{value!r} escapes the workspace: absolute paths are not allowed")
    if ".." in p.parts:
        raise ValueError(f"{value!r} escapes the workspace: '..' is not allowed")
    return value


RelPath = Annotated[
    str,
    Field(min_length=1, description="A path relative to its base; no '..', not absolute."),
    AfterValidator(check_relative_path),
]


class RetryPolicy(_Model):
    """Bounded retries of one stage (a Prefect task retry reruns the whole stage)."""

    max_retries: int = Field(0, ge=0, le=20, description="Extra attempts after the first.")
    delay_seconds: float = Field(0, ge=0, le=3600, description="Pause between attempts.")
    # Not "on": YAML 1.1 reads a bare `on:` key as the boolean true.
    when: list[Literal["timeout", "nonzero"]] = Field(
        default_factory=lambda: ["timeout"],  # type: ignore[arg-type]
        description="Which outcomes count as a failed attempt worth retrying.",
    )


class FailurePolicy(_Model):
    """What to do when a required gate fails (retry is the default); see ``longrun.governance.policy``."""

    action: Literal["retry", "escalate", "skip", "abort"] = "retry"
    max_retries: int = Field(3, ge=0, le=1000)


class Budgets(_Model):
    per_hour_usd: float | None = Field(None, ge=0, description="USD over a sliding 60-minute window.")
    total_usd: float | None = Field(None, ge=0, description="USD over one run of the job.")
    usd: float | None = Field(
        None,
        ge=0,
        description="USD over one run of the job, reported or computed from model prices (the normalized budget); "
        "the same cap as total_usd, so set one of them.",
    )
    tokens: int | None = Field(None, ge=0, description="Tokens over one run of the job.")
    input_tokens: int | None = Field(
        None, ge=0, description="Input (prompt) tokens over one run of the job, cache reads and writes included."
    )
    output_tokens: int | None = Field(None, ge=0, description="Output tokens over one run of the job, reasoning included.")
    on_hourly_limit: Literal["stop", "wait"] = "stop"
    job_total_usd: float | None = Field(
        None, ge=0, description="USD over every run of the job together (each scheduled or keyed run adds to it)."
    )

    @model_validator(mode="after")
    def _one_usd_cap(self) -> Budgets:
        if self.usd is not None and self.total_usd is not None:
            raise ValueError("usd and total_usd are the same cap; set one of them")
        return self


class ModelPolicy(_Model):
    """Phase → model routing. Cheaper models on discovery, stronger on commit-worthy phases."""

    default: str = Field(..., min_length=1)
    search: str | None = None
    plan: str | None = None
    execute: str | None = None
    debug: str | None = None
    verify: str | None = None

    def select_model_for_phase(self, phase: str | None) -> str:
        if phase is None:
            return self.default
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        return getattr(self, phase) or self.default


UsageFormat = Literal["claude-json", "claude-stream-json", "codex-jsonl", "gemini-json", "gemini-stream-json", "aider-analytics"]


class UsageCapture(_Model):
    """How a stage reports spend besides LONGRUN_USAGE_FILE: an agent's own output format, or regexes over its stdout."""

    format: UsageFormat | None = Field(
        None,
        description="Read usage from the stage's output in this agent format (aider-analytics: the file at "
        "{analytics_log} / $LONGRUN_ANALYTICS_LOG). See docs/agents.md.",
    )
    required: StrictBool = Field(
        False, description="With a format: a stage whose output holds no usage fails the run (usage_missing)."
    )
    usd_regex: str | None = None
    tokens_regex: str | None = None

    @field_validator("usd_regex", "tokens_regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                rx = re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regex: {exc}") from None
            if rx.groups < 1:
                raise ValueError("regex needs one capturing group")
        return v


#: An environment variable name: a letter or ``_``, then letters, digits, ``_`` (no ``=``, no NUL).
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,254}$"
_ENV_NAME = re.compile(ENV_NAME_PATTERN)


def _check_env(env: dict[str, str]) -> dict[str, str]:
    bad = sorted(repr(k) for k in env if not _ENV_NAME.fullmatch(k))
    if bad:
        raise ValueError(f"invalid variable name(s) {', '.join(bad)}: letters, digits and '_', not starting with a digit")
    reserved = sorted(k for k in env if k.startswith("LONGRUN_"))
    if reserved:
        raise ValueError(f"LONGRUN_* variables are set by the engine and cannot be overridden: {', '.join(reserved)}")
    nul = sorted(k for k, v in env.items() if "\x00" in v)
    if nul:
        raise ValueError(f"the value of {', '.join(nul)} contains NUL")
    return env


EnvVars = Annotated[dict[str, str], AfterValidator(_check_env)]
EnvName = Annotated[str, Field(pattern=ENV_NAME_PATTERN, description="An environment variable name.")]
EnvPassthrough = Annotated[
    list[EnvName],
    Field(
        description="Names of the engine's own environment variables this command may see (e.g. ANTHROPIC_API_KEY); "
        "everything else of the engine's environment is withheld. A name the engine does not have is skipped.",
    ),
]


class ModelPrice(_Model):
    """USD per million tokens of one model (overrides the shipped price table, see docs/agents.md)."""

    input: float = Field(..., ge=0, description="USD per million uncached input tokens.")
    output: float = Field(..., ge=0, description="USD per million output tokens (reasoning included).")
    cache_read: float | None = Field(None, ge=0, description="USD per million cached input tokens; default: input.")
    cache_write: float | None = Field(None, ge=0, description="USD per million cache-write tokens; default: input.")


Agent = Literal["claude", "codex", "gemini", "aider"]


class Stage(_Model):
    id: str = Field(..., pattern=ID_PATTERN, description="Unique stage id; also the Prefect task name.")
    run: list[str] | None = Field(
        None, min_length=1, description="argv; argv[0] must be in allowed_tools. Default with 'agent': the preset's argv."
    )
    agent: Agent | None = Field(
        None,
        description="An agent preset: fills in the argv, the usage format and the agent's executable as an "
        "allowed tool (see docs/agents.md; longrun plan prints them).",
    )
    prompt_file: RelPath | None = Field(
        None,
        description="Relative to the workspace; rendered with {goal}, {iteration} and {previous_failures} "
        "into the {prompt} argv placeholder (default with 'agent': PROMPT.md).",
    )
    phase: Phase | None = Field(None, description="Routing phase; defaults to the stage id when it names a phase.")
    depends_on: list[str] = Field(default_factory=list)
    shell: StrictBool = Field(False, description="Run argv[0] through /bin/sh -c (argv[1] is the script).")
    timeout: float | None = Field(None, gt=0, le=7 * 24 * 3600, description="Seconds; defaults to defaults.timeout.")
    retry: RetryPolicy | None = None
    env: EnvVars = Field(default_factory=dict)
    env_passthrough: EnvPassthrough = Field(default_factory=list)
    usage: UsageCapture | None = None

    @model_validator(mode="after")
    def _run_or_agent(self) -> Stage:
        if self.run is None and self.agent is None:
            raise ValueError("set 'run' (an argv) or 'agent' (a preset)")
        if self.usage is not None and self.usage.required and self.usage.format is None and self.agent is None:
            raise ValueError("usage.required needs a usage.format (or an agent preset, which sets one)")
        return self

    @property
    def effective_phase(self) -> str | None:
        if self.phase is not None:
            return self.phase
        return self.id if self.id in PHASES else None


class _GateBase(_Model):
    id: str = Field(..., pattern=ID_PATTERN)
    on_failure: FailurePolicy | None = None


class _CommandGate(_GateBase):
    run: list[str] = Field(..., min_length=1)
    shell: StrictBool = False
    timeout: float | None = Field(None, gt=0, le=7 * 24 * 3600)
    env: EnvVars = Field(default_factory=dict)
    env_passthrough: EnvPassthrough = Field(default_factory=list)


class CommandPassGate(_CommandGate):
    kind: Literal["command_pass"]


class BuildPassGate(_CommandGate):
    kind: Literal["build_pass"]


class TestPassGate(_CommandGate):
    kind: Literal["test_pass"]
    junit_xml: RelPath | None = Field(
        None,
        description="Where the command writes JUnit XML, relative to the workspace. "
        "Default: the path in $LONGRUN_JUNIT_XML (also available as {junit_xml} in argv).",
    )
    min_pass_rate: float | None = Field(None, ge=0, le=1)


class FileChangedGate(_GateBase):
    kind: Literal["file_changed"]
    pattern: str = Field(..., min_length=1, description="Glob matched against paths in the iteration's diff.")


class ArtifactExistsGate(_GateBase):
    kind: Literal["artifact_exists"]
    path: RelPath


class ApprovalGate(_GateBase):
    kind: Literal["approval"]
    step: str = Field(..., pattern=ID_PATTERN)


Gate = Annotated[
    CommandPassGate | BuildPassGate | TestPassGate | FileChangedGate | ArtifactExistsGate | ApprovalGate,
    Field(discriminator="kind"),
]


class QualityGates(_Model):
    required: list[Gate] = Field(default_factory=list)
    optional: list[Gate] = Field(default_factory=list)


class StopConditions(_Model):
    max_iterations: int = Field(10, ge=1, le=100_000)
    max_wall_time: float | None = Field(None, gt=0, description="Seconds of wall time over the whole job.")
    stop_file: RelPath = Field(".maestro/STOP", description="Relative to the job root; its presence stops the run.")
    no_progress_iterations: int | None = Field(
        None, ge=1, description="Stop after N iterations with the same patch and the same failing tests."
    )


class Approval(_Model):
    """A human checkpoint: the flow pauses (``pause_flow_run``) until someone decides."""

    before: str | None = Field(None, description="Stage id to pause before.")
    after: Literal["gates"] | None = Field(None, description="'gates': a final approval before completion.")
    escalate: str | None = Field(
        None,
        description="A required gate id whose on_failure action is escalate: this entry sets how its "
        "escalation (step escalate:<gate>) waits. Adds no checkpoint of its own.",
    )
    step: str | None = Field(None, pattern=ID_PATTERN, description="Name of the step; default before-<stage> / after-gates.")
    when: Literal["first_iteration", "every_iteration"] = "first_iteration"
    timeout: float = Field(3600, gt=0, le=30 * 24 * 3600, description="Seconds to wait before approval_timeout.")
    poll_interval: float = Field(2, ge=1, le=600, description="Seconds between checks while paused.")
    mode: Literal["pause", "suspend"] = Field(
        "pause",
        description="pause: the flow run waits in its process. suspend: the process exits and frees its worker; "
        "on resume the flow re-enters and completed stages come back from their persisted results "
        "(needs a deployment).",
    )

    @model_validator(mode="after")
    def _one_anchor(self) -> Approval:
        if sum(x is not None for x in (self.before, self.after, self.escalate)) != 1:
            raise ValueError("set exactly one of 'before' (a stage id), 'after: gates' or 'escalate' (a gate id)")
        if self.escalate is not None and self.step is not None:
            raise ValueError("an 'escalate' entry's step is always escalate:<gate>; drop 'step'")
        return self

    @property
    def step_name(self) -> str:
        if self.escalate is not None:
            return f"escalate:{self.escalate}"
        return self.step or (f"before-{self.before}" if self.before else "after-gates")


class Schedule(_Model):
    cron: str = Field(..., min_length=9)
    timezone: str = Field(..., description="An explicit IANA time zone, e.g. Europe/Berlin.")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        return check_cron(v)

    @field_validator("timezone")
    @classmethod
    def _iana(cls, v: str) -> str:
        return check_timezone(v)


#: URL schemes ``workspace.repo`` may use; any other ``<scheme>://`` (a remote helper) is refused.
REPO_SCHEMES = ("https", "http", "ssh", "git", "file")
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._~-]+@[A-Za-z0-9.-]+:[^:]")
_REF_PATTERN = re.compile(r"^[A-Za-z0-9._/+-]+$")


def check_repo_url(value: str) -> str:
    """A git URL longrun may clone: ``<scheme>://`` of :data:`REPO_SCHEMES`, ``user@host:path`` or an absolute path.

    Refused: a leading ``-`` (git would read an option), control characters,
    ``<transport>::<address>`` (remote helpers, ``ext::`` and ``fd::`` run
    programs) and any other scheme (``<scheme>://`` runs ``git-remote-<scheme>``).
    """
    if not value or value != value.strip():
        raise ValueError("must be a git URL without leading or trailing spaces")
    if value.startswith("-"):
        raise ValueError(f"{value!r} starts with '-' (git would read it as an option)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must not contain control characters")
    if "::" in value.split("/", 1)[0] or value.lower().startswith(("ext:", "fd:")):
        raise ValueError(f"{value!r} names a remote helper ('<transport>::'); ext::, fd:: and other helpers are refused")
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", value)
    if m is not None:
        if m.group(1).lower() not in REPO_SCHEMES:
            raise ValueError(f"scheme {m.group(1)!r} is not allowed (allowed: {', '.join(REPO_SCHEMES)})")
        return value
    if value.startswith("/") or _SCP_LIKE.match(value):
        return value
    raise ValueError(f"{value!r} is not a git URL (<scheme>://..., user@host:path or an absolute path)")


def check_git_ref(value: str) -> str:
    """A branch, tag or commit name: no leading ``-``, no ``..``, no spaces, control or special characters."""
    if not _REF_PATTERN.match(value) or value.startswith(("-", "/")) or value.endswith(("/", ".", ".lock")):
        raise ValueError(f"{value!r} is not a valid git ref name (letters, digits, '.', '_', '/', '+', '-')")
    if ".." in value or "//" in value or "/." in value or value.startswith("."):
        raise ValueError(f"{value!r} is not a valid git ref name")
    return value


GitRef = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(check_git_ref)]


class Workspace(_Model):
    path: RelPath = Field(".", description="Relative to the job root (where .maestro/ lives).")
    template: RelPath | None = Field(
        None,
        description="Directory, relative to the spec file, copied into an absent workspace "
        "and committed into a new git repository.",
    )
    repo: str | None = Field(
        None,
        max_length=2048,
        description="Git URL (https://, ssh://, git://, file://, user@host:path or an absolute path) cloned into an "
        "absent workspace; the checkpointed patches of the finished iterations are replayed on it (docs/scale-out.md). "
        "Not with template.",
    )
    ref: GitRef | None = Field(
        None,
        description="With repo: the branch, tag or commit to clone; default: the remote's default branch (its HEAD). "
        "The commit it names when the job first clones is journaled and used from then on.",
    )
    push_branch: GitRef | None = Field(
        None,
        description="With repo: after each iteration, its tree is committed and force-pushed to this branch of repo "
        "(for review); a failed push is journaled, not fatal.",
    )

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str | None) -> str | None:
        return None if v is None else check_repo_url(v)

    @model_validator(mode="after")
    def _repo_or_template(self) -> Workspace:
        if self.repo is not None and self.template is not None:
            raise ValueError("repo and template are mutually exclusive: the workspace is cloned or copied, not both")
        if self.repo is None and (self.ref is not None or self.push_branch is not None):
            raise ValueError("ref and push_branch need repo")
        if self.repo is not None and PurePosixPath(self.path.replace("\\", "/")) == PurePosixPath("."):
            raise ValueError("with repo, path must name a directory below the job root (not '.'), e.g. path: ws")
        return self


class Defaults(_Model):
    timeout: float = Field(600, gt=0, le=7 * 24 * 3600)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    env_passthrough: EnvPassthrough = Field(default_factory=list)


class SandboxConfig(_Model):
    """How stages and command gates are sandboxed (bubblewrap); ``sandbox: none`` opts out."""

    network: StrictBool = Field(True, description="false: the command gets no network (a new, empty network namespace).")


class EvidenceConfig(_Model):
    store: str | None = Field(None, description="'<block-type-slug>/<name>' or a path; default .maestro/evidence.")
    signing_key: str | None = Field(
        None,
        pattern=r"^prefect-secret/[a-z0-9][a-z0-9-]*$",
        description="'prefect-secret/<name>': a Secret block holding an Ed25519 private key (PEM); the manifest is signed (DSSE).",
    )


class Lineage(_Model):
    root_job_id: str = Field(..., pattern=r"^[0-9a-f]{12}$")
    parent_job_id: str = Field(..., pattern=r"^[0-9a-f]{12}$")
    generation: int = Field(..., ge=1)


class JobSpec(_Model):
    version: Literal["longrun/v1"] = SPEC_VERSION  # type: ignore[assignment]
    name: str = Field(..., pattern=NAME_PATTERN, description="Job name; the Prefect flow is named after it.")
    goal: str = Field(..., min_length=1)
    workspace: Workspace = Field(default_factory=Workspace)
    scope_paths: list[RelPath] = Field(default_factory=lambda: ["."])
    allowed_tools: list[str] = Field(..., min_length=1)
    plan_file: RelPath | None = Field("PLAN.md", description="Written by the plan stage, relative to the workspace.")
    mode: Literal["advisory", "strict"] = "advisory"
    isolation: Literal["none", "worktree"] = "none"
    sandbox: Literal["none"] | SandboxConfig = Field(
        default_factory=SandboxConfig,
        description="Stages and command gates run under bubblewrap (the default). 'none' opts out: "
        "journaled, and refused in strict mode unless a waiver allows it.",
    )
    allow_shell: StrictBool = Field(
        False, description="Allow shell: true on stages and gates (a shell script can run any program)."
    )
    budgets: Budgets = Field(default_factory=Budgets)
    model_policy: ModelPolicy
    model_prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="Model name (or name prefix) → price; overrides the shipped price table for computed costs.",
    )
    stages: list[Stage] = Field(..., min_length=1)
    quality_gates: QualityGates = Field(default_factory=QualityGates)
    stop_conditions: StopConditions = Field(default_factory=StopConditions)
    approvals: list[Approval] = Field(default_factory=list)
    schedule: Schedule | None = None
    defaults: Defaults = Field(default_factory=Defaults)
    on_failure: FailurePolicy = Field(default_factory=FailurePolicy)
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)
    lineage: Lineage | None = None
    max_generation: int = Field(
        3, ge=0, le=10, description="How deep spawned jobs may nest (a child of this job has generation + 1)."
    )
    tags: list[str] = Field(default_factory=list)

    @field_validator("allowed_tools")
    @classmethod
    def _tools(cls, v: list[str]) -> list[str]:
        for t in v:
            if not t or any(c.isspace() for c in t):
                raise ValueError(f"invalid tool name {t!r}: must be a non-empty word")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> JobSpec:
        errors = cross_check(self.model_dump(mode="json"))
        if errors:
            # One "path: message" line per problem; the loader splits them.
            raise ValueError("\n".join(f"{path}: {msg}" for path, msg in errors))
        return self

    def stage(self, stage_id: str) -> Stage:
        for st in self.stages:
            if st.id == stage_id:
                return st
        raise KeyError(stage_id)

    def select_model_for_phase(self, phase: str | None) -> str:
        return self.model_policy.select_model_for_phase(phase)
