"""Deployments of job specs to Prefect (SPEC O2): names, parameters, schedules, keys.

Pure helpers: nothing here imports Prefect, so ``longrun`` builds its parser
(``--pool`` and ``--collision-strategy``) from this module cheaply. What talks
to Prefect lives beside it: ``longrun.flows.deploy_runner`` (Prefect schedule
and concurrency objects, the RunnerDeployment, work pools, ``serve``) and
``longrun.flows.deploy_trigger`` (finding a deployment, starting a run).

Naming
------
``longrun deploy SPEC`` creates the deployment ``<job>/<deployment>``: the flow is
named after the job and the deployment defaults to the job name too, so
``run_deployment("hello-loop/hello-loop")``. ``deployments/prefect.yaml``
(``prefect deploy``) loads the fixed entrypoint ``flows/entry.py:longrun_job_entry``
whose flow is ``longrun-job``, so its deployments are ``longrun-job/<deployment>``.

Idempotency
-----------
Prefect makes a flow run unique per *(flow, idempotency key)*. Several
deployments can share one flow (all ``prefect.yaml`` deployments share
``longrun-job``), so ``intended_run_key`` always puts the job id in the key:
``longrun:<jobId>:at:<UTC time>`` for a scheduled time, ``longrun:<jobId>:key:<KEY>``
for an explicit key. Every trigger of the same intended run computes the same
key, and the server returns the existing flow run instead of creating another.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longrun.storage.paths import JOB_ID_RE

if TYPE_CHECKING:
    from longrun.spec.loader import LoadedSpec

#: The process work pool ``longrun deploy`` and ``prefect.yaml`` use by default.
DEFAULT_POOL = "longrun-process"
#: The flow name of the module-level entrypoint (``flows/entry.py``).
ENTRY_FLOW_NAME = "longrun-job"
#: Module-path entrypoint used by ``longrun deploy`` (``--pool`` and ``--serve``).
ENTRYPOINT_MODULE = "longrun.flows.entry.longrun_job_entry"
#: File entrypoint used by ``deployments/prefect.yaml`` (relative to the repository root).
ENTRYPOINT_FILE = "flows/entry.py:longrun_job_entry"
#: Default concurrency: one run of a deployment at a time, later ones wait.
DEFAULT_CONCURRENCY = 1
DEFAULT_COLLISION_STRATEGY = "ENQUEUE"
COLLISION_STRATEGIES = ("ENQUEUE", "CANCEL_NEW")

# Prefect refuses these characters in flow and deployment names.
_BANNED = "/%&><"


@dataclass(frozen=True)
class ScheduleSpec:
    """A cron expression in an explicit IANA time zone (the spec's ``schedule``)."""

    cron: str
    timezone: str

    def to_dict(self) -> dict[str, str]:
        return {"cron": self.cron, "timezone": self.timezone}


@dataclass(frozen=True)
class DeploymentPlan:
    """Everything a deployment of one job is made of, before Prefect is involved."""

    job_id: str
    job_name: str
    flow_name: str
    deployment_name: str
    parameters: dict[str, Any]
    tags: list[str]
    description: str
    schedule: ScheduleSpec | None
    concurrency_limit: int = DEFAULT_CONCURRENCY
    collision_strategy: str = DEFAULT_COLLISION_STRATEGY

    @property
    def full_name(self) -> str:
        """The name ``run_deployment`` takes: ``<flow>/<deployment>``."""
        return run_deployment_name(self.flow_name, self.deployment_name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "job": self.job_name,
            "flow": self.flow_name,
            "deployment": self.deployment_name,
            "name": self.full_name,
            "parameters": {k: v for k, v in self.parameters.items() if k != "spec"},
            "tags": list(self.tags),
            "schedule": self.schedule.to_dict() if self.schedule else None,
            "concurrency": {"limit": self.concurrency_limit, "collision_strategy": self.collision_strategy},
        }


def run_deployment_name(flow_name: str, deployment_name: str) -> str:
    return f"{flow_name}/{deployment_name}"


def check_name(name: str, what: str = "deployment name") -> str:
    """A flow or deployment name Prefect accepts (no ``/ % & > <``), else ``ValueError``."""
    name = name.strip()
    if not name or len(name) > 200 or any(c in name for c in _BANNED) or any(ord(c) < 32 for c in name):
        raise ValueError(f"{what} {name!r} is empty, too long, or contains one of {' '.join(_BANNED)}")
    return name


def canonical_spec(loaded: LoadedSpec) -> dict[str, Any]:
    """The spec as a dict (every effective field): the ``spec`` parameter of every deployment."""
    from longrun.spec.loader import spec_document  # the spec models load only when a spec is needed

    return spec_document(loaded.spec)


def deployment_parameters(loaded: LoadedSpec, root: str | Path, source: str | Path | None = None) -> dict[str, Any]:
    """``longrun_job``'s parameters: the canonical spec, the absolute job root and spec path.

    ``source`` (default: the file the spec was loaded from) is where the flow
    finds the workspace template when the workspace does not exist yet.
    """
    from longrun.storage.mirror import is_remote_ref

    src = source if source is not None else loaded.source
    if is_remote_ref(root):
        # A remote root: any worker of the pool can run it, so no path of this machine goes with it.
        return {"spec": canonical_spec(loaded), "root": str(root), "source": None}
    return {
        "spec": canonical_spec(loaded),
        "root": str(Path(root).resolve()),
        "source": str(Path(src).resolve()) if src is not None else None,
    }


def deployment_tags(loaded: LoadedSpec) -> list[str]:
    """``longrun``, ``job:<name>``, ``job-id:<jobId>``, then the spec's own tags (no duplicates)."""
    out: list[str] = []
    for tag in ["longrun", f"job:{loaded.spec.name}", f"job-id:{loaded.job_id}", *loaded.spec.tags]:
        if tag not in out:
            out.append(tag)
    return out


def schedule_of(loaded: LoadedSpec) -> ScheduleSpec | None:
    s = loaded.spec.schedule
    return ScheduleSpec(cron=s.cron, timezone=s.timezone) if s is not None else None


def plan_deployment(
    loaded: LoadedSpec,
    root: str | Path,
    *,
    name: str | None = None,
    flow_name: str | None = None,
    concurrency_limit: int = DEFAULT_CONCURRENCY,
    collision_strategy: str = DEFAULT_COLLISION_STRATEGY,
) -> DeploymentPlan:
    """The deployment of one job: flow and deployment named after the job by default."""
    if concurrency_limit < 1:
        raise ValueError("the concurrency limit must be 1 or more")
    strategy = collision_strategy.upper()
    if strategy not in COLLISION_STRATEGIES:
        raise ValueError(f"collision strategy must be one of {', '.join(COLLISION_STRATEGIES)}")
    return DeploymentPlan(
        job_id=loaded.job_id,
        job_name=loaded.spec.name,
        flow_name=check_name(flow_name or loaded.spec.name, "flow name"),
        deployment_name=check_name(name or loaded.spec.name),
        parameters=deployment_parameters(loaded, root),
        tags=deployment_tags(loaded),
        description=loaded.spec.goal,
        schedule=schedule_of(loaded),
        concurrency_limit=concurrency_limit,
        collision_strategy=strategy,
    )


# ----------------------------------------------------------- intended runs


def parse_time(value: str | datetime) -> datetime:
    """An aware datetime from a datetime or an ISO 8601 string (``Z`` accepted); naive is refused."""
    if isinstance(value, datetime):
        dt = value
    else:
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 date-time") from None
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{value!s} has no UTC offset; give one (e.g. +01:00 or Z) so the time is unambiguous")
    return dt


def utc_text(dt: datetime) -> str:
    """``dt`` in UTC as ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` (the form idempotency keys use)."""
    u = dt.astimezone(UTC)
    text = u.strftime("%Y-%m-%dT%H:%M:%S")
    if u.microsecond:
        text += f".{u.microsecond:06d}"
    return text + "Z"


def intended_run_key(job_id: str, scheduled_time: str | datetime | None = None, explicit_key: str | None = None) -> str:
    """The idempotency key of one intended run of a job.

    - ``explicit_key`` given: ``longrun:<jobId>:key:<explicit_key>`` (it names the run;
      ``scheduled_time`` is then ignored).
    - ``scheduled_time`` given: ``longrun:<jobId>:at:<UTC ISO time>``; the same instant
      written in any offset or zone gives the same key.
    - neither: a fresh key (``longrun:<jobId>:once:<uuid>``): every such trigger is
      its own intended run.
    """
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise ValueError(f"{job_id!r} is not a job id (12 hex digits)")
    if explicit_key is not None:
        key = explicit_key.strip()
        if not key:
            raise ValueError("the explicit key is empty")
        return f"longrun:{job_id}:key:{key}"
    if scheduled_time is not None:
        return f"longrun:{job_id}:at:{utc_text(parse_time(scheduled_time))}"
    return f"longrun:{job_id}:once:{uuid.uuid4().hex}"


def job_id_from_deployment(tags: list[str] | None, parameters: dict[str, Any] | None) -> str | None:
    """The job id of a longrun deployment: its ``job-id:`` tag, else computed from its spec."""
    for tag in tags or []:
        if tag.startswith("job-id:") and JOB_ID_RE.match(tag[len("job-id:") :]):
            return tag[len("job-id:") :]
    spec = (parameters or {}).get("spec")
    if isinstance(spec, dict):
        from longrun.errors import SpecError
        from longrun.spec.loader import job_id_for, validate_spec_data

        try:
            return job_id_for(validate_spec_data(spec))
        except SpecError:
            return None
    return None


# ----------------------------------------------------------- prefect.yaml

#: The schedule the example deployment gets when its spec has none.
EXAMPLE_SCHEDULE = ScheduleSpec(cron="0 2 * * *", timezone="Europe/Berlin")
PREFECT_YAML_VERSION = "3.8.8"
_REPO = "{{ repo.stdout }}"


def prefect_yaml_document(
    loaded: LoadedSpec,
    spec_relpath: str,
    *,
    pool: str = DEFAULT_POOL,
    default_schedule: ScheduleSpec | None = EXAMPLE_SCHEDULE,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``prefect.yaml`` document that deploys one spec with ``prefect deploy --all``.

    Run from the repository root: a build step records the directory
    (``pwd``, no image is built or pushed), the pull step makes it the runs'
    working directory, and ``root``/``source`` are absolute paths under it.
    """
    text = json.dumps(canonical_spec(loaded))
    if "{{" in text:
        raise ValueError("the spec contains '{{', which prefect deploy would treat as a template")
    schedule = schedule_of(loaded) or default_schedule
    deployment: dict[str, Any] = {
        "name": check_name(name or loaded.spec.name),
        "description": loaded.spec.goal,
        "entrypoint": ENTRYPOINT_FILE,
        "tags": deployment_tags(loaded),
        "parameters": {
            "spec": canonical_spec(loaded),
            "root": _REPO,
            "source": f"{_REPO}/{spec_relpath}",
        },
        "schedules": [{**schedule.to_dict(), "active": True}] if schedule else [],
        "concurrency_limit": {"limit": DEFAULT_CONCURRENCY, "collision_strategy": DEFAULT_COLLISION_STRATEGY},
        "work_pool": {"name": pool, "work_queue_name": None, "job_variables": {}},
    }
    return {
        "name": "longrun",
        "prefect-version": PREFECT_YAML_VERSION,
        "build": [{"prefect.deployments.steps.run_shell_script": {"id": "repo", "script": "pwd"}}],
        "push": None,
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": _REPO}}],
        "deployments": [deployment],
    }


def render_prefect_yaml(loaded: LoadedSpec, spec_relpath: str, **kwargs: Any) -> str:
    """``prefect_yaml_document`` as YAML text, with a header saying how it was made."""
    import yaml

    doc = prefect_yaml_document(loaded, spec_relpath, **kwargs)
    schedule_note = (
        "the spec's schedule"
        if loaded.spec.schedule
        else f"no schedule in the spec: the example schedule {EXAMPLE_SCHEDULE.cron!r} ({EXAMPLE_SCHEDULE.timezone})"
    )
    header = (
        f"# GENERATED by deployments/render.py from {spec_relpath} (job {loaded.spec.name}, id {loaded.job_id}).\n"
        "# Do not edit by hand: change the spec and run `python deployments/render.py`;\n"
        "# tests/test_deployments.py fails when this file and the spec drift apart.\n"
        "#\n"
        "# Deploy from the repository root against a Prefect server (nothing is built or pushed):\n"
        "#   export PREFECT_API_URL=http://127.0.0.1:4200/api\n"
        f"#   prefect work-pool create {doc['deployments'][0]['work_pool']['name']} --type process\n"
        "#   prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml\n"
        f"#   prefect worker start --pool {doc['deployments'][0]['work_pool']['name']}\n"
        f'# The deployment is run_deployment("{ENTRY_FLOW_NAME}/{doc["deployments"][0]["name"]}").\n'
        "#\n"
        "# build: records the directory `prefect deploy` runs in (the repository root) as\n"
        "#   {{ repo.stdout }}; pull: runs start there; root/source: absolute paths under it.\n"
        f"# schedules: {schedule_note}.\n"
    )
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)
    return header + body
