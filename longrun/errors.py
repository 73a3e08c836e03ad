"""One exception root with stable codes.

Codes are part of the public contract: once shipped they never change, and the
CLI prints them as the first word of an error and under ``error.code`` in
``--json`` output.

::

    LongrunError(code, message, retryable=False)
    ├── SpecError                job_invalid_spec   (carries every Problem)
    ├── JobNotFound              job_not_found
    ├── JobIdInvalid             job_id_invalid
    ├── ToolNotAllowed           tool_not_allowed
    ├── PathEscape               path_escape
    ├── JournalCorrupt           journal_corrupt
    ├── EventVersionUnsupported  event_version_unsupported
    ├── SpecImmutable            job_spec_immutable
    ├── StageError               stage_failed
    ├── EvidenceMissing          evidence_missing   (no bundle/manifest/job file to build or verify)
    ├── EvidenceMismatch         evidence_mismatch  (a bundle does not match its manifest)
    ├── EvidenceStoreInvalid     evidence_store_invalid (a store reference that cannot be resolved)
    └── EvidenceStoreError       evidence_store_error   (terminal: 4xx, NoSuchBucket, AccessDenied)
        └── EvidenceTransientError  evidence_upload_failed (retryable: 5xx, throttling, timeouts)

Raised as plain ``LongrunError(code=...)`` where no handler needs a subclass:
``usage_invalid``, ``usage_missing`` (a stage with ``usage.required`` printed no
usage), ``usage_unpriced`` (a token-only tool used a model with no price),
``prompt_missing``, ``prompt_invalid`` (an agent's ``prompt_file``), ``junit_missing``, ``junit_invalid``, ``git_failed``,
``git_timeout`` (a git call on the workspace ran past its timeout and was killed),
``sandbox_unavailable`` (bubblewrap is missing or cannot create a sandbox here),
``sandbox_required`` (``sandbox: none`` in ``strict`` mode without a valid waiver),
``workspace_exists``, ``workspace_missing``, ``template_not_found``,
``run_crashed``, ``prefect_unavailable`` (no Prefect server could be reached or
started; nothing ran), ``checkpoint_missing`` (the journal names a record the
checkpoint store does not hold).

Governance codes (also plain ``LongrunError(code=...)``): ``waiver_invalid``,
``waiver_expired`` (longrun.governance.waiver); ``workspace_dirty``,
``patch_apply_failed`` (longrun.workspace.worktree); ``lineage_too_deep``
(longrun.governance.lineage); ``gate_failed``, ``gate_retries_exhausted``
(longrun.governance.policy, journaled as ``run_failed.code``); ``budget_exhausted``
(longrun.governance.budget); ``scope_violation`` (longrun.governance.scope).

Workspace codes (``workspace.repo``, longrun.workspace.travel):
``workspace_repo_unreachable`` (the clone failed), ``workspace_ref_not_found``
(``ref`` or the journaled base commit is not in the repository),
``workspace_diverged`` (a patch is missing, altered or does not apply, or a tree
differs from the journal's), ``workspace_unrecoverable`` (an interrupted
iteration's finished stages changed a workspace that is not here),
``workspace_push_failed`` (journaled; never ends a run).
"""

from __future__ import annotations

from dataclasses import dataclass


class LongrunError(Exception):
    """Root of every error longrun raises on purpose."""

    code: str = "longrun_error"

    def __init__(self, message: str, *, code: str | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.retryable = retryable
        #: Set once the failure is in the job's journal (as ``run_failed``), so no caller journals it twice.
        self.journaled = False

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: where (file + JSON path) and what."""

    path: str
    message: str
    file: str | None = None

    def to_dict(self) -> dict:
        out = {"path": self.path, "message": self.message}
        if self.file is not None:
            out["file"] = self.file
        return out


class SpecError(LongrunError):
    code = "job_invalid_spec"

    def __init__(self, problems: list[Problem], *, file: str | None = None) -> None:
        self.problems = list(problems)
        self.file = file
        lines = [f"{p.file or file or '<spec>'}: {p.path}: {p.message}" for p in self.problems]
        super().__init__(f"{len(self.problems)} problem(s)\n  " + "\n  ".join(lines))

    def to_dict(self) -> dict:
        return {
            "code": self.code,
            "message": f"{len(self.problems)} problem(s)",
            "problems": [p.to_dict() for p in self.problems],
        }


class JobNotFound(LongrunError):
    code = "job_not_found"


class JobIdInvalid(LongrunError):
    code = "job_id_invalid"


class ToolNotAllowed(LongrunError):
    code = "tool_not_allowed"


class PathEscape(LongrunError):
    code = "path_escape"


class JournalCorrupt(LongrunError):
    code = "journal_corrupt"


class EventVersionUnsupported(LongrunError):
    code = "event_version_unsupported"


class SpecImmutable(LongrunError):
    code = "job_spec_immutable"


class StageError(LongrunError):
    code = "stage_failed"


class EvidenceMissing(LongrunError):
    code = "evidence_missing"


class EvidenceMismatch(LongrunError):
    code = "evidence_mismatch"


class EvidenceStoreInvalid(LongrunError):
    code = "evidence_store_invalid"


class EvidenceStoreError(LongrunError):
    """The evidence store refused or lost an object; retrying the same call will not help.

    Also raised with code ``evidence_upload_failed`` (not retryable) when an
    upload went through but the stored object's size or sha256 differs.
    """

    code = "evidence_store_error"


class EvidenceTransientError(EvidenceStoreError):
    """A store call failed in a way that may pass on retry (5xx, throttling, network)."""

    code = "evidence_upload_failed"

    def __init__(self, message: str, *, code: str | None = None, retryable: bool = True) -> None:
        super().__init__(message, code=code, retryable=retryable)


#: Exit codes of the ``longrun`` command (docs/cli.md, "Exit codes").
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_EVIDENCE_UPLOAD_FAILED = 7
EXIT_PREFECT_UNAVAILABLE = 8

_BAD, _FAIL, _UPLOAD = EXIT_BAD_INPUT, EXIT_FAILED, EXIT_EVIDENCE_UPLOAD_FAILED

#: Every stable code and the exit code a command ends with when it ends on it;
#: ``None``: the code never ends a command (it is retried, reported, or library
#: only). The one table: the CLI maps codes through :func:`exit_code_for`, and a
#: test checks docs/cli.md documents each code with this exit.
EXIT_CODES: dict[str, int | None] = {
    # bad input: nothing ran, or the command was refused
    "job_invalid_spec": _BAD,
    "job_not_found": _BAD,
    "job_id_invalid": _BAD,
    "tool_not_allowed": _BAD,
    "path_escape": _BAD,
    "job_spec_immutable": _BAD,
    "workspace_exists": _BAD,
    "workspace_missing": _BAD,
    "template_not_found": _BAD,
    "workspace_dirty": _BAD,
    "usage_error": _BAD,
    "approval_step_unknown": _BAD,
    "approval_conflict": _BAD,
    # the same decision twice: the second records nothing and ends the command with 0
    "approval_already_decided": None,
    "job_already_running": _BAD,
    "apply_nothing": _BAD,
    "evidence_missing": _BAD,
    "evidence_store_invalid": _BAD,
    "evidence_pruned": _BAD,
    "deployment_not_found": _BAD,
    "deployment_ambiguous": _BAD,
    "deployment_not_longrun": _BAD,
    "sandbox_unavailable": _BAD,
    "sandbox_required": _BAD,
    # a job root URL that is not s3://BUCKET/PREFIX, or a mirror of another store
    "root_invalid": _BAD,
    # failures
    "journal_corrupt": _FAIL,
    "event_version_unsupported": _FAIL,
    "usage_invalid": _FAIL,
    "usage_missing": _FAIL,
    "usage_unpriced": _FAIL,
    "prompt_missing": _FAIL,
    "prompt_invalid": _FAIL,
    "git_failed": _FAIL,
    "git_timeout": _FAIL,
    "run_crashed": _FAIL,
    "prefect_api_error": _FAIL,
    "record_invalid": _FAIL,
    "record_version_unsupported": _FAIL,
    "checkpoint_missing": _FAIL,
    "journal_missing": _FAIL,
    "journal_unwritable": _FAIL,
    "journal_chain_broken": _FAIL,
    # a remote job root (longrun.storage.mirror): not reachable at all, a request that failed after its
    # retries (nothing was lost: try again), a refused request, appends that kept losing their race
    "root_unreachable": _FAIL,
    "store_unavailable": _FAIL,
    "store_error": _FAIL,
    "journal_contended": _FAIL,
    # reported by `longrun doctor` (and dropped by the next append or --repair)
    "journal_torn_tail": None,
    "spec_schema_unsupported": _FAIL,
    "gate_unknown": _FAIL,
    "strict_contract_failed": _FAIL,
    "evidence_mismatch": _FAIL,
    "evidence_signing_failed": _FAIL,
    "waiver_invalid": _FAIL,
    "waiver_expired": _FAIL,
    "patch_apply_failed": _FAIL,
    # workspace.repo (longrun.workspace.travel): the workspace cannot be made what the journal says
    "workspace_repo_unreachable": _FAIL,
    "workspace_ref_not_found": _FAIL,
    "workspace_diverged": _FAIL,
    "workspace_unrecoverable": _FAIL,
    # journaled as workspace_push_failed; the run goes on
    "workspace_push_failed": None,
    "lineage_too_deep": _FAIL,
    "gate_failed": _FAIL,
    "gate_retries_exhausted": _FAIL,
    # the evidence store
    "evidence_store_error": _UPLOAD,
    "evidence_upload_failed": _UPLOAD,
    # no Prefect server could be reached or started: nothing ran, try again once one can be had
    "prefect_unavailable": EXIT_PREFECT_UNAVAILABLE,
    # never end a command
    "stage_failed": None,
    # a conditional write found its key taken (a lost compare-and-set race, handled where it happens)
    "store_object_exists": None,
    "junit_missing": None,
    "junit_invalid": None,
    "budget_exhausted": None,
    "scope_violation": None,
}

#: Exit codes of ``run``/``resume`` by the run's status (docs/cli.md, "Exit codes"). The one table:
#: every status has an entry (a test checks it against ``longrun.journal.state.Status``).
EXIT_STOPPED = 3
EXIT_STOPPED_BUDGET = 4
EXIT_REJECTED = 5
EXIT_WAITING = 6
STATUS_EXIT: dict[str, int] = {
    "COMPLETED": 0,
    "FAILED": EXIT_FAILED,
    # the command ended while the journal still says the run runs (its engine died), or never started it
    "RUNNING": EXIT_FAILED,
    "PENDING": EXIT_FAILED,
    "STOPPED": EXIT_STOPPED,
    "STOPPED_BUDGET": EXIT_STOPPED_BUDGET,
    "REJECTED": EXIT_REJECTED,
    # a human must decide, or has decided and the run waits for `longrun resume`
    "WAITING_APPROVAL": EXIT_WAITING,
    "APPROVED": EXIT_WAITING,
}

#: Every stable code, for docs and tests.
STABLE_CODES: tuple[str, ...] = tuple(EXIT_CODES)


def exit_code_for(code: str | None) -> int:
    """The exit code of a command that ends on error ``code`` (1 for a code not in the table)."""
    return EXIT_CODES.get(code or "") or EXIT_FAILED
