"""The deployment entrypoint: a module-level flow that workers and ``prefect deploy`` load.

Deployments need a flow that Prefect can import by name in another process:

- ``longrun deploy --pool`` and ``--serve`` deploy this flow with the *module path*
  entrypoint ``longrun.flows.entry.longrun_job_entry`` (longrun is installed, so
  any worker with the same environment imports it from anywhere; nothing is built
  or pushed). The flow is renamed after the job (``with_options(name=<job>)``);
  the worker loads the module-level object and runs it under the deployment's
  flow, so the run shows under the job's name in the UI.
- ``deployments/prefect.yaml`` uses the *file* entrypoint
  ``flows/entry.py:longrun_job_entry``; ``prefect deploy`` takes the flow name
  from this object, so those deployments belong to the flow ``longrun-job``.

The flow body is ``longrun_job``'s own function (``.fn``), called in this flow
run: no subflow, the same parameters (``spec``, ``root``, ``source``,
``job_id``, ``run_key``) and the same final state. Flow runs are renamed ``<job>-<jobId>`` when
they start, as for ``longrun run``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from longrun.flows.job import longrun_job

#: The flow name of this entrypoint (shared with ``longrun_job``).
ENTRY_FLOW_NAME = "longrun-job"


def _flow_run_name() -> str:
    """``<job>-<jobId>`` from the run's parameters; never fails (a bad spec fails in the flow)."""
    try:
        from prefect.runtime import flow_run

        params = flow_run.parameters or {}
        spec = params.get("spec") or {}
        name = spec.get("name") if isinstance(spec, dict) else None
        job_id = params.get("job_id")
        if not job_id and isinstance(spec, dict):
            from longrun.spec.loader import job_id_for, stored_spec_data, validate_spec_data

            job_id = job_id_for(validate_spec_data(stored_spec_data(spec)))
        if name and job_id:
            return f"{name}-{job_id}"
        return str(name or ENTRY_FLOW_NAME)
    except Exception:
        return ENTRY_FLOW_NAME


@flow(name=ENTRY_FLOW_NAME, flow_run_name=_flow_run_name, persist_result=False, validate_parameters=False)
def longrun_job_entry(
    spec: dict[str, Any],
    root: str = ".",
    source: str | None = None,
    job_id: str | None = None,
    force: bool = False,
    run_key: str | None = None,
) -> Any:
    """Run a longrun job (the canonical spec) under ``root``; see ``longrun.flows.job.longrun_job``.

    ``root`` is the job root (``.maestro/`` lives there), resolved against the
    run's working directory if relative; ``source`` is the spec file, used to
    find the workspace template when the workspace does not exist yet;
    ``run_key`` names the intended run (else the flow run's idempotency key or
    cron tick does). The flow run ends in the state that tells the run's outcome.
    """
    kwargs: dict[str, Any] = {"spec": spec, "root": root, "source": source, "job_id": job_id}
    if force:
        kwargs["force"] = True
    if run_key:
        kwargs["run_key"] = run_key
    return longrun_job.fn(**kwargs)
