"""Starting one intended run of a deployed job (SPEC O2): ``longrun trigger``.

A deployment is found by id, ``<flow>/<deployment>`` or job (its tags), and
run with ``run_deployment(..., timeout=0, idempotency_key=intended_run_key(...))``
so that every trigger of the same intended run shares one flow run (see
``longrun.flows.deploy`` for the key).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    DeploymentFilterName,
    DeploymentFilterTags,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
)
from prefect.client.schemas.sorting import DeploymentSort, FlowRunSort
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from longrun.errors import LongrunError
from longrun.flows.deploy import intended_run_key, job_id_from_deployment, parse_time, run_deployment_name, utc_text
from longrun.storage.paths import JOB_ID_RE

__all__ = ["TriggerResult", "resolve_deployment", "trigger"]


@dataclass(frozen=True)
class TriggerResult:
    flow_run_id: str
    flow_run_name: str
    state: str
    deployment_id: str
    deployment: str
    job_id: str
    idempotency_key: str
    scheduled_time: str | None
    created: str | None
    #: True when ``at`` matched a run that already existed for that time (e.g. the
    #: Prefect scheduler's own run); False when run_deployment returned the run.
    scheduled_run_reused: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _flow_name(client: Any, flow_id: Any, cache: dict[Any, str]) -> str:
    if flow_id not in cache:
        cache[flow_id] = client.read_flow(flow_id).name
    return cache[flow_id]


def resolve_deployment(client: Any, ref: str) -> tuple[Any, str]:
    """A deployment and its ``<flow>/<deployment>`` name from a reference.

    ``ref`` is a deployment id, ``<flow>/<deployment>``, or a job (name or id):
    the one deployment tagged ``job:<name>`` / ``job-id:<id>`` or named ``ref``.
    Raises ``LongrunError`` ``deployment_not_found`` / ``deployment_ambiguous``.
    """
    names: dict[Any, str] = {}
    try:
        dep_id = uuid.UUID(ref)
    except ValueError:
        dep_id = None
    try:
        if dep_id is not None:
            dep = client.read_deployment(dep_id)
            return dep, run_deployment_name(_flow_name(client, dep.flow_id, names), dep.name)
        if "/" in ref:
            dep = client.read_deployment_by_name(ref)
            return dep, ref
    except ObjectNotFound:
        raise LongrunError(f"no deployment {ref!r} on the Prefect server", code="deployment_not_found") from None

    filters = [DeploymentFilter(tags=DeploymentFilterTags(all_=[f"job:{ref}"]))]
    if JOB_ID_RE.match(ref):
        filters.append(DeploymentFilter(tags=DeploymentFilterTags(all_=[f"job-id:{ref}"])))
    filters.append(DeploymentFilter(name=DeploymentFilterName(any_=[ref])))
    found: dict[Any, Any] = {}
    for f in filters:
        for dep in client.read_deployments(deployment_filter=f, limit=50, sort=DeploymentSort.NAME_ASC, offset=0):
            found.setdefault(dep.id, dep)
    if not found:
        raise LongrunError(
            f"no deployment of job {ref!r} (tags job:{ref} / job-id:{ref}) and none named {ref!r}; "
            "deploy it with: longrun deploy SPEC",
            code="deployment_not_found",
        )
    if len(found) > 1:
        listed = sorted(run_deployment_name(_flow_name(client, d.flow_id, names), d.name) for d in found.values())
        raise LongrunError(
            f"{ref!r} matches {len(found)} deployments: {', '.join(listed)}; name one as <flow>/<deployment>",
            code="deployment_ambiguous",
        )
    (dep,) = found.values()
    return dep, run_deployment_name(_flow_name(client, dep.flow_id, names), dep.name)


def _scheduled_run_at(client: Any, deployment_id: Any, at: datetime) -> Any | None:
    """A flow run of the deployment that the Prefect scheduler (or anyone) created for ``at``."""
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=at, before_=at)),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=1,
        offset=0,
    )
    return runs[0] if runs else None


def trigger(
    target: str,
    *,
    key: str | None = None,
    at: str | datetime | None = None,
    parameters: dict[str, Any] | None = None,
) -> TriggerResult:
    """Start one intended run of a deployed job; triggers of the same intended run share it.

    ``run_deployment(..., timeout=0, idempotency_key=intended_run_key(job_id, at, key))``:
    the Prefect server returns the existing flow run for a repeated key. With
    ``at`` (and no ``key``) a run that already exists for exactly that time --
    typically the one the Prefect scheduler created from the deployment's cron
    schedule -- is returned instead of creating a second one. The run is
    scheduled at ``at`` (now when not given).
    """
    when = parse_time(at) if at is not None else None
    with get_client(sync_client=True) as client:
        dep, full_name = resolve_deployment(client, target)
        job_id = job_id_from_deployment(list(dep.tags or []), dict(dep.parameters or {}))
        if job_id is None:
            raise LongrunError(
                f"deployment {full_name!r} is not a longrun job deployment (no job-id tag, no valid spec parameter)",
                code="deployment_not_longrun",
            )
        idem = intended_run_key(job_id, when, key)
        existing = _scheduled_run_at(client, dep.id, when) if when is not None and key is None else None
    if existing is not None:
        fr, reused = existing, True
    else:
        fr = run_deployment(
            dep.id,
            parameters=parameters or None,
            scheduled_time=when,
            timeout=0,
            idempotency_key=idem,
            as_subflow=False,
        )
        reused = False
    state = fr.state.type.value if fr.state is not None else "UNKNOWN"
    return TriggerResult(
        flow_run_id=str(fr.id),
        flow_run_name=fr.name,
        state=state,
        deployment_id=str(dep.id),
        deployment=full_name,
        job_id=job_id,
        idempotency_key=fr.idempotency_key or idem,
        scheduled_time=utc_text(when) if when is not None else None,
        created=utc_text(fr.created) if fr.created is not None else None,
        scheduled_run_reused=reused,
    )
