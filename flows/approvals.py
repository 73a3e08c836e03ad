"""The approver port on Prefect: ``pause_flow_run`` / ``suspend_flow_run`` with a typed form (SPEC G3).

The engine (:mod:`longrun.engine.approvals`) decides when to ask, journals the
request and the decision, and picks the pause key; this module only waits.
Three ways to answer a wait:

* the Prefect UI's **Resume** form (decision, approver, comment);
* ``longrun approve JOB --step S --approver NAME [--reject]``, which journals
  the decision and resumes the paused run with the same input;
* the REST API: ``POST /api/flow_runs/<id>/resume`` with
  ``{"run_input": {"decision": "approve", "approver": "...", "comment": "..."}}``.

Prefect trap handled by the engine: a pause key reused within one flow run is
rejected by the orchestrator and ``pause_flow_run`` returns the *old* input
without pausing, so every request gets a new key (``<step>-<iteration>-<n>``),
except a suspend-mode wait resumed in a new process, which needs the same key
to get its input back.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput
from pydantic import Field

from longrun.engine.ports import Answer, Wait


class ApprovalInput(RunInput):
    """The Resume form."""

    decision: Literal["approve", "reject"] = Field("approve", description="approve to continue, reject to end the run")
    approver: str = Field(..., min_length=1, description="who decides (journaled)")
    comment: str = Field("", description="optional note, journaled with the decision")


class PrefectApprover:
    def __init__(self, flow_run_id: str) -> None:
        self.flow_run_id = flow_run_id
        self._where: dict[str, Any] | None = None

    def where(self) -> dict[str, Any]:
        if self._where is None:
            from prefect.client.orchestration import get_client
            from prefect.settings import get_current_settings

            with get_client(sync_client=True) as client:
                api_url = str(client.api_url).rstrip("/")
            ui = get_current_settings().ui_url
            ui_url = f"{str(ui).rstrip('/')}/runs/flow-run/{self.flow_run_id}" if ui else None
            self._where = {"flow_run_id": self.flow_run_id, "api_url": api_url, "ui_url": ui_url}
        return self._where

    def wait(self, request: Wait) -> Answer | None:
        # Only the description: Prefect rebuilds every field passed here and
        # drops its help text, and the class default already is "approve".
        form = ApprovalInput.with_initial_data(description=request.description)
        try:
            if request.mode == "suspend":
                # The process exits here (Prefect's Pause signal) and the worker is freed.
                answer = suspend_flow_run(wait_for_input=form, timeout=math.ceil(request.timeout), key=request.key)
            else:
                answer = pause_flow_run(
                    wait_for_input=form,
                    timeout=math.ceil(request.timeout),
                    poll_interval=math.ceil(request.poll_interval),
                    key=request.key,
                )
        except FlowPauseTimeout:
            self._running_again()
            return None
        return Answer(decision=answer.decision, approver=answer.approver, comment=answer.comment)

    def _running_again(self) -> None:
        """After a pause timed out the flow run is still PAUSED (or FAILED by the server); the flow goes on.

        Forced back to RUNNING, so the state the flow ends in (``AwaitingApproval``, or a
        decision journaled meanwhile) is the one the UI shows.
        """
        from prefect.client.orchestration import get_client
        from prefect.states import Running

        try:
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(self.flow_run_id, Running(), force=True)  # type: ignore[arg-type]
        except Exception:  # the journal holds the truth; a state Prefect keeps is only the UI's view
            pass
