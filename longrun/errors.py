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
    └── StageError               stage_failed

Raised as plain ``LongrunError(code=...)`` where no handler needs a subclass:
``usage_invalid``, ``junit_missing``, ``junit_invalid``, ``git_failed``,
``workspace_exists``, ``workspace_missing``, ``template_not_found``,
``run_crashed``.
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


#: Every stable code, for docs and tests (docs/cli.md lists them with exit codes).
STABLE_CODES: tuple[str, ...] = (
    "job_invalid_spec",
    "job_not_found",
    "job_id_invalid",
    "tool_not_allowed",
    "path_escape",
    "journal_corrupt",
    "event_version_unsupported",
    "job_spec_immutable",
    "stage_failed",
    "usage_invalid",
    "junit_missing",
    "junit_invalid",
    "git_failed",
    "workspace_exists",
    "workspace_missing",
    "template_not_found",
    "run_crashed",
)
