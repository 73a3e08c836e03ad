"""Strict mode and governed waivers (SPEC G2).

In ``advisory`` mode a job is validated and run; nothing more is required.
In ``strict`` mode (release/GA workflows) completion must be *verified* — the
strict completion contract, checked by :func:`strict_check`:

1. the job's status is ``COMPLETED``;
2. every iteration has a ``checkpoint_written`` event, and each of its files
   (``plan-diff.md``, ``patch.diff``, ``command.log``, ``test-report.json``,
   ``summary.md``, plus any other journaled file) exists under
   ``.maestro/checkpoints/<jobId>/<iter>/`` with the sha256 the journal holds;
3. every required gate of the last iteration passed (a gate *skipped* by the
   failure policy did not pass: strict mode reports it);
4. the evidence bundle verifies (``bundle_check``, supplied by the caller from
   ``longrun.evidence.verify``; without one the contract is not met — strict mode
   fails closed).

When the contract is not met, a governed exception can still let the release
through: ``.maestro/waivers/longrun.json`` with ``reason``, ``expires_at``
(ISO 8601 with a time zone) and ``approved_by``. A valid, unexpired waiver
makes the report ``ok`` with the waiver noted and the problems still listed;
a malformed (``waiver_invalid``) or expired (``waiver_expired``) one is
reported as a problem and never makes the report ok.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from longrun.errors import LongrunError, PathEscape
from longrun.execution.checkpoint import CHECKPOINT_FILES
from longrun.journal.state import RunState, Status
from longrun.storage.paths import JobPaths, safe_join, sha256_file

__all__ = ["WAIVER_PATH", "StrictReport", "Waiver", "check_waiver", "load_waiver", "strict_check", "strict_report"]

#: Where the waiver lives, relative to the job root.
WAIVER_PATH = ".maestro/waivers/longrun.json"

_FIELDS = ("reason", "expires_at", "approved_by")


@dataclass(frozen=True)
class Waiver:
    reason: str
    expires_at: datetime
    approved_by: str
    path: Path

    def to_dict(self) -> dict[str, str]:
        return {
            "reason": self.reason,
            "expires_at": self.expires_at.isoformat(),
            "approved_by": self.approved_by,
            "path": str(self.path),
        }


def _invalid(path: Path | str, what: str) -> LongrunError:
    return LongrunError(f"waiver {path} is invalid: {what}", code="waiver_invalid")


def load_waiver(root: Path) -> Waiver | None:
    """The waiver under ``root``, or ``None`` when there is none.

    Raises ``waiver_invalid`` naming everything wrong with it: not JSON, not
    an object, a missing, non-string or blank field, an ``expires_at`` that is
    not ISO 8601 or has no time zone, unknown fields, or a file that resolves
    outside ``root`` (a symlink).
    """
    try:
        path = safe_join(Path(root), WAIVER_PATH, what="waiver")
    except PathEscape as exc:
        raise _invalid(WAIVER_PATH, exc.message) from None
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError, UnicodeDecodeError, a directory
        raise _invalid(path, f"not a readable JSON document ({exc})") from None
    if not isinstance(data, dict):
        raise _invalid(path, f"expected a JSON object, got {type(data).__name__}")
    problems: list[str] = []
    values: dict[str, str] = {}
    for name in _FIELDS:
        value = data.get(name)
        if name not in data:
            problems.append(f"{name}: field required")
        elif not isinstance(value, str):
            problems.append(f"{name}: must be a string, got {type(value).__name__}")
        elif not value.strip():
            problems.append(f"{name}: must not be empty")
        else:
            values[name] = value.strip()
    expires: datetime | None = None
    if "expires_at" in values:
        try:
            expires = datetime.fromisoformat(values["expires_at"])
        except ValueError:
            problems.append(f"expires_at: {values['expires_at']!r} is not an ISO 8601 date-time")
        else:
            if expires.tzinfo is None or expires.utcoffset() is None:
                problems.append(f"expires_at: {values['expires_at']!r} has no time zone (add Z or +00:00)")
                expires = None
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        problems.append(f"unknown field(s): {', '.join(unknown)}")
    if problems or expires is None:
        raise _invalid(path, "; ".join(problems))
    return Waiver(reason=values["reason"], expires_at=expires, approved_by=values["approved_by"], path=path)


def check_waiver(waiver: Waiver, now: datetime) -> Waiver:
    """``waiver`` if it is still in force at ``now``; ``waiver_expired`` once ``now >= expires_at``."""
    if now >= waiver.expires_at:
        raise LongrunError(
            f"waiver {waiver.path} expired at {waiver.expires_at.isoformat()} (approved by {waiver.approved_by})",
            code="waiver_expired",
        )
    return waiver


@dataclass(frozen=True)
class StrictReport:
    """``ok`` is True when the contract holds, or when a valid waiver covers its ``problems``."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    waiver: Waiver | None = None

    @property
    def waived(self) -> bool:
        return self.ok and self.waiver is not None

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "waived": self.waived,
            "problems": list(self.problems),
            "waiver": self.waiver.to_dict() if self.waiver else None,
        }


def _checkpoint_problems(paths: JobPaths, state: RunState) -> list[str]:
    problems: list[str] = []
    if state.iteration == 0:
        return ["no iteration ran: there are no checkpoints"]
    bundled = _bundled_checkpoints(paths) if state.pruned_iterations else {}
    for it in range(1, state.iteration + 1):
        digests = state.checkpoints.get(it)
        if digests is None:
            problems.append(f"iteration {it}: no checkpoint_written event")
            continue
        it_dir = paths.iteration_dir(it)
        for name in sorted(set(CHECKPOINT_FILES) | set(digests)):
            file = it_dir / name
            if name not in digests:
                problems.append(f"iteration {it}: {name} has no journaled sha256")
            elif it in state.pruned_iterations:
                # Pruned from disk: the (separately verified) evidence bundle holds it.
                if bundled.get(f"checkpoints/{it}/{name}") != digests[name]:
                    problems.append(
                        f"iteration {it}: {name} was pruned and is not in the evidence bundle with its journaled sha256"
                    )
            elif not file.is_file():
                problems.append(f"iteration {it}: {name} is missing ({file})")
            elif (actual := sha256_file(file)) != digests[name]:
                problems.append(f"iteration {it}: {name} sha256 {actual[:12]}… differs from the journaled {digests[name][:12]}…")
    return problems


def _bundled_checkpoints(paths: JobPaths) -> dict[str, str]:
    """Member name → sha256 from the job's manifest ({} when there is none to read)."""
    import json

    manifest = paths.evidence_dir / f"{paths.job_id}.manifest.json"
    try:
        subjects = json.loads(manifest.read_text(encoding="utf-8"))["subject"]
        return {s["name"]: s["digest"]["sha256"] for s in subjects}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _gate_problems(state: RunState, required_gates: Iterable[str] | None) -> list[str]:
    if state.iteration == 0:
        return []
    last = state.iteration
    results = state.gate_results.get(last, {})
    skips = state.gate_skips.get(last, {})
    problems: list[str] = []
    for gate, result in sorted(results.items()):
        if not result.required or result.passed:
            continue
        if gate in skips:
            problems.append(f"iteration {last}: required gate {gate!r} was skipped by policy, not passed")
        else:
            problems.append(f"iteration {last}: required gate {gate!r} did not pass")
    for gate in required_gates or ():
        if gate not in results:
            problems.append(f"iteration {last}: required gate {gate!r} was not evaluated")
    return problems


def strict_check(
    root: Path,
    job_id: str,
    state: RunState,
    now: datetime,
    *,
    bundle_check: Callable[[], list[str]] | None = None,
    required_gates: Iterable[str] | None = None,
) -> StrictReport:
    """Check the strict completion contract of one job (see the module docstring).

    ``bundle_check`` verifies the evidence bundle and returns its problems
    (``[]`` when it verifies); pass ``None`` only where no bundle exists, which
    is itself a problem. ``required_gates`` (the spec's required gate ids), when
    given, must each have a result in the last iteration.
    """
    paths = JobPaths(Path(root), job_id)
    problems: list[str] = []
    if state.status != Status.COMPLETED:
        reason = f" ({state.stop_reason})" if state.stop_reason else ""
        problems.append(f"job status is {state.status}{reason}, not COMPLETED")
    problems += _checkpoint_problems(paths, state)
    problems += _gate_problems(state, required_gates)
    if bundle_check is None:
        problems.append("evidence bundle not verified (no bundle check)")
    else:
        problems += [f"evidence: {p}" for p in bundle_check()]
    if not problems:
        return StrictReport(ok=True)
    try:
        waiver = load_waiver(root)
        if waiver is None:
            return StrictReport(ok=False, problems=problems)
        return StrictReport(ok=True, problems=problems, waiver=check_waiver(waiver, now))
    except LongrunError as exc:  # waiver_invalid / waiver_expired: reported, never ok
        return StrictReport(ok=False, problems=[*problems, f"{exc.code}: {exc.message}"])


def strict_report(root: Path, job_id: str, state: RunState, spec: Any, now: datetime) -> StrictReport:
    """The strict-mode release check (G2) for a job: :func:`strict_check` with its bundle verified.

    Used at the end of a strict run and by ``longrun verify JOB --strict``.
    """
    from longrun.evidence.bundle import bundle_paths
    from longrun.evidence.verify import verify

    tar, manifest = bundle_paths(root, job_id)

    def bundle_check() -> list[str]:
        if not manifest.exists():
            return [f"no evidence bundle (build it with: longrun evidence {job_id})"]
        report = verify(manifest, tar, job_files_root=root)
        return [f"{m.name}: {m.problem}" for m in report.mismatches]

    return strict_check(
        root, job_id, state, now, bundle_check=bundle_check, required_gates=[g.id for g in spec.quality_gates.required]
    )
