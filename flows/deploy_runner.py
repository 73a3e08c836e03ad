"""Deploying a job to Prefect (SPEC O2): schedule and concurrency objects, the RunnerDeployment, work pools, serve.

``longrun deploy`` calls these after ``longrun.flows.deploy.plan_deployment``
has decided everything a deployment is made of; this module turns that plan
into Prefect objects and API calls. The flow deployed is the module-level
entrypoint ``longrun.flows.entry.longrun_job_entry``, renamed after the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import get_current_settings
from prefect.types.entrypoint import EntrypointType
from prefect.utilities.asyncutils import run_coro_as_sync

from longrun.flows.deploy import DEFAULT_COLLISION_STRATEGY, DEFAULT_CONCURRENCY, DeploymentPlan, ScheduleSpec
from longrun.flows.entry import longrun_job_entry

__all__ = [
    "PoolCheck",
    "api_url",
    "apply_deployment",
    "concurrency_config",
    "cron_schedule",
    "ensure_pool",
    "next_run_times",
    "runner_deployment",
    "serve",
]


def api_url() -> str | None:
    """The Prefect API this process talks to; None means Prefect's embedded (ephemeral) server."""
    return get_current_settings().api.url or None


# ----------------------------------------------------------- Prefect objects


def cron_schedule(schedule: ScheduleSpec | Any) -> CronSchedule:
    """``prefect.client.schemas.schedules.CronSchedule`` with the spec's cron *and* IANA time zone."""
    return CronSchedule(cron=schedule.cron, timezone=schedule.timezone)


def concurrency_config(limit: int = DEFAULT_CONCURRENCY, strategy: str = DEFAULT_COLLISION_STRATEGY) -> ConcurrencyLimitConfig:
    """``ConcurrencyLimitConfig(limit=1, collision_strategy=ENQUEUE)`` by default."""
    return ConcurrencyLimitConfig(limit=limit, collision_strategy=ConcurrencyLimitStrategy(strategy.upper()))


def next_run_times(schedule: ScheduleSpec | Any, n: int = 3, start: datetime | None = None) -> list[datetime]:
    """The next ``n`` run times of a cron schedule, as aware datetimes in its own time zone.

    Computed by Prefect's server-side ``CronSchedule.get_dates`` (what the
    Prefect scheduler uses), so DST behaves exactly as the server schedules it.
    """
    from prefect.server.schemas.schedules import CronSchedule as ServerCronSchedule  # the server's models: only here

    tz = ZoneInfo(schedule.timezone)
    sched = ServerCronSchedule(cron=schedule.cron, timezone=schedule.timezone)
    dates = run_coro_as_sync(sched.get_dates(n=n, start=start or datetime.now(UTC)))
    return [datetime.fromtimestamp(d.timestamp(), tz) for d in dates or []]


def _deployment_options(plan: DeploymentPlan) -> dict[str, Any]:
    """What ``flow.to_deployment`` and ``flow.serve`` are both given for a job."""
    return {
        "name": plan.deployment_name,
        "schedules": [cron_schedule(plan.schedule)] if plan.schedule else [],
        "parameters": plan.parameters,
        "description": plan.description,
        "tags": plan.tags,
        "entrypoint_type": EntrypointType.MODULE_PATH,
    }


def runner_deployment(plan: DeploymentPlan, pool: str | None) -> tuple[Any, Any]:
    """The job's flow (``longrun_job_entry`` renamed after the job) and its RunnerDeployment."""
    flow = longrun_job_entry.with_options(name=plan.flow_name)
    deployment = flow.to_deployment(
        concurrency_limit=concurrency_config(plan.concurrency_limit, plan.collision_strategy),
        work_pool_name=pool,
        **_deployment_options(plan),
    )
    return flow, deployment


def apply_deployment(deployment: Any, pool: str | None) -> Any:
    """Create or update the deployment on the server (for the work pool ``pool``, or to be served); its id."""
    return deployment.apply(work_pool_name=pool) if pool else deployment.apply()


def serve(flow: Any, plan: DeploymentPlan) -> None:
    """Serve the deployment from this process until Ctrl-C; its schedule is paused on the way out."""
    flow.serve(
        global_limit=concurrency_config(plan.concurrency_limit, plan.collision_strategy),
        pause_on_shutdown=True,
        print_starting_message=False,
        **_deployment_options(plan),
    )


# ----------------------------------------------------------- work pools


@dataclass(frozen=True)
class PoolCheck:
    """What ``ensure_pool`` found: ``created`` by this call, else the existing pool's ``type`` (None after a race)."""

    created: bool
    type: str | None


def ensure_pool(pool: str) -> PoolCheck:
    """The work pool exists afterwards; a missing one is created as a process pool."""
    from prefect.workers.process import ProcessWorker  # only when a pool may have to be created

    with get_client(sync_client=True) as client:
        try:
            wp = client.read_work_pool(pool)
        except ObjectNotFound:
            try:
                client.create_work_pool(
                    WorkPoolCreate(name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template())
                )
            except ObjectAlreadyExists:
                return PoolCheck(created=False, type=None)
            return PoolCheck(created=True, type="process")
    return PoolCheck(created=False, type=wp.type)
