"""Deploying a job to Prefect (SPEC O2): schedule and concurrency objects, the RunnerDeployment, work pools, serve.

``longrun deploy`` calls these after ``longrun.flows.deploy.plan_deployment``
has decided everything a deployment is made of; this module turns that plan
into Prefect objects and API calls. The flow deployed is the module-level
entrypoint ``longrun.flows.entry.longrun_job_entry``, renamed after the job.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager
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
    "ServeStopped",
    "api_url",
    "apply_deployment",
    "concurrency_config",
    "cron_schedule",
    "ensure_pool",
    "next_run_times",
    "pause_schedule",
    "runner_deployment",
    "serve",
    "stop_on_signals",
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


class ServeStopped(BaseException):
    """SIGINT or SIGTERM while ``longrun deploy --serve`` sets up or serves (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signal = signal.Signals(signum).name


@contextmanager
def stop_on_signals() -> Iterator[list[str]]:
    """From here on SIGINT and SIGTERM raise :class:`ServeStopped` (the list gets the signal's name).

    Installed before the deployment is applied, so a signal at any moment ends
    the same way: the caller pauses the schedule and exits 0.
    """
    seen: list[str] = []

    def handler(signum: int, frame: Any) -> None:
        seen.append(signal.Signals(signum).name)
        raise ServeStopped(signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield seen
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def serve(deployment: Any, seen: list[str]) -> None:
    """Serve the deployment from this process until SIGINT or SIGTERM; then return (the caller pauses the schedule).

    A signal cancels the runner's main task from inside its event loop, so
    the runner's polling loops and client close as they should (no
    ``Runner.astop was never awaited``); the runner's own pause-on-shutdown is
    off because the caller pauses the schedule whatever the moment.
    """
    from prefect.runner import Runner

    runner = Runner(name=deployment.name, pause_on_shutdown=False)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def stop(signum: int, frame: Any = None) -> None:
            seen.append(signal.Signals(signum).name)
            try:
                loop.call_soon_threadsafe(task.cancel)  # type: ignore[union-attr]
            except RuntimeError:  # the loop has closed: end as a signal outside it does
                raise ServeStopped(signum) from None

        runner.handle_sigterm = stop  # type: ignore[method-assign]  # Runner.start installs it for SIGTERM
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        await runner.aadd_deployment(deployment)
        await runner.start()

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass


def pause_schedule(full_name: str, deployment_id: Any | None) -> bool:
    """Pause the deployment's schedule (by id, else by ``flow/deployment`` name); False if there is none."""
    with get_client(sync_client=True) as client:
        if deployment_id is None:
            try:
                deployment_id = client.read_deployment_by_name(full_name).id
            except ObjectNotFound:
                return False
        client.pause_deployment(deployment_id)
    return True


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
