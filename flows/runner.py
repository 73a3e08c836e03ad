"""Running a job's flow in this process, and resuming a paused flow run: the Prefect side of ``longrun run/resume/approve``.

The CLI imports this module only when it runs or resumes a flow, so the
read-only commands never import Prefect. What the CLI gets back is plain data
(``FlowRunEnd``), not a Prefect state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import tags
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings

from longrun.errors import LongrunError
from longrun.flows.job import job_flow
from longrun.spec.loader import LoadedSpec, spec_document

__all__ = ["FlowRunEnd", "resume_paused_run", "run_job_flow"]


@dataclass(frozen=True)
class FlowRunEnd:
    """How the flow run of ``run_job_flow`` ended, as Prefect saw it (the journal says how the job ended)."""

    completed: bool
    message: str
    flow_run_id: str | None
    #: The run the flow ran (its id, as stored), when the flow got that far.
    run: str | None = None


#: What Prefect raises when its embedded server does not answer within PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.
_EPHEMERAL_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"


def run_job_flow(
    loaded: LoadedSpec,
    root: Path,
    *,
    job_id: str | None = None,
    force: bool = False,
    api_url: str | None = None,
    run_key: str | None = None,
) -> FlowRunEnd:
    """Run the job's flow (tagged ``longrun`` plus the spec's tags) here until it returns.

    ``job_id`` names an existing run (resume), ``run_key`` an intended run; ``api_url`` the server
    (None: whatever Prefect's settings say). A ``KeyboardInterrupt``
    propagates: the caller says how to resume. An embedded server that does not
    start is ``prefect_unavailable`` (the flow run never began: nothing is journaled).
    """
    flow = job_flow(loaded)
    source = str(loaded.source) if loaded.source else None
    updates = {PREFECT_API_URL: api_url} if api_url else {}
    try:
        with temporary_settings(updates=updates), tags("longrun", *loaded.spec.tags):
            state = flow(
                spec=spec_document(loaded.spec),
                root=str(root),
                source=source,
                job_id=job_id,
                force=force,
                run_key=run_key,
                return_state=True,
            )
    except RuntimeError as exc:
        if _EPHEMERAL_TIMEOUT not in str(exc):
            raise
        from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

        raise LongrunError(
            f"Prefect's embedded server did not start within {PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()}s "
            "(--ephemeral); raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or drop --ephemeral to use the "
            "local server",
            code="prefect_unavailable",
            retryable=True,
        ) from None
    flow_run_id = state.state_details.flow_run_id
    try:
        data = state.result(raise_on_failure=False)
    except Exception:  # no result to read back (a crash): the journal says what happened
        data = None
    run = data.get("job_id") if isinstance(data, dict) else None
    return FlowRunEnd(
        completed=state.is_completed(),
        message=state.message or "",
        flow_run_id=str(flow_run_id) if flow_run_id else None,
        run=run if isinstance(run, str) else None,
    )


def resume_paused_run(flow_run_id: str, api_url: str | None, run_input: dict[str, Any]) -> None:
    """Resume a flow run paused for an approval with ``run_input``, on the server at ``api_url`` if given.

    Raises whatever Prefect raises when the run is not paused (any more) or the
    server is gone; the caller falls back to the journal.
    """
    updates = {PREFECT_API_URL: api_url} if api_url else {}
    with temporary_settings(updates=updates):
        resume_flow_run(UUID(flow_run_id), run_input=run_input)
