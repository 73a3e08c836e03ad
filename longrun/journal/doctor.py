"""``longrun doctor``: what is wrong with a run's record, and the one repair that is always safe.

Findings, each with a stable code and the file (and line) it is about:

* ``journal_missing``: the run has a claim, checkpoints or evidence, but no journal;
* ``journal_unwritable``: the journal cannot be appended to (read-only file or directory);
* ``journal_torn_tail``: bytes after the last newline (an append cut by a crash). The
  journal ignores them when reading and drops them on the next append;
  ``repair`` drops them now. It is the only repair: it removes no complete event;
* ``journal_corrupt``: a line that is not a valid event, or a ``seq`` out of order
  (a garbage or duplicated line): named by line, never repaired;
* ``journal_chain_broken``: the hash chain breaks (an edited, inserted, deleted or moved event);
* ``checkpoint_missing``: a record the journal names (a gate result, a checkpoint) is not on disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longrun import atomicio
from longrun.errors import LongrunError
from longrun.journal.chain import check_chain
from longrun.journal.fold import replay
from longrun.journal.local import Journal
from longrun.storage.paths import JobPaths


@dataclass(frozen=True)
class Finding:
    code: str
    path: str
    message: str
    repaired: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "path": self.path, "message": self.message, "repaired": self.repaired}


@dataclass
class DoctorReport:
    run: str
    findings: list[Finding] = field(default_factory=list)
    events: int = 0
    chained: bool = False

    @property
    def healthy(self) -> bool:
        """No finding is left unrepaired."""
        return all(f.repaired for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "healthy": self.healthy,
            "events": self.events,
            "chained": self.chained,
            "findings": [f.to_dict() for f in self.findings],
        }


def examine(paths: JobPaths, *, repair: bool = False, claimed: bool = False) -> DoctorReport:
    """Examine one run's record under ``paths``; with ``repair`` drop a torn tail."""
    report = DoctorReport(paths.job_id)
    journal = paths.events_file
    if not journal.exists():
        if claimed or paths.checkpoints.exists() or any(paths.evidence_dir.glob(f"{paths.job_id}.*")):
            report.findings.append(
                Finding("journal_missing", str(journal), "the run has a claim, checkpoints or evidence but no journal")
            )
        return report
    if not os.access(journal, os.W_OK) or not os.access(journal.parent, os.W_OK):
        report.findings.append(Finding("journal_unwritable", str(journal), "the journal cannot be appended to"))
    data = journal.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        repaired = False
        if repair and os.access(journal, os.W_OK):
            fd = atomicio.open_for_update(journal)
            try:
                atomicio.truncate(fd, end)
            finally:
                os.close(fd)
            repaired = True
        report.findings.append(
            Finding(
                "journal_torn_tail",
                str(journal),
                f"{len(data) - end} byte(s) after the last complete line (an append cut by a crash)"
                + ("; dropped" if repaired else "; `longrun doctor --repair` drops them"),
                repaired,
            )
        )
    chain = check_chain(data[:end])
    report.events, report.chained = chain.events, chain.chained
    try:
        state = replay(Journal(journal).read())
    except LongrunError as exc:
        report.findings.append(Finding(exc.code, str(journal), exc.message))
        return report
    if not chain.ok:
        report.findings.append(Finding("journal_chain_broken", str(journal), f"at seq {chain.broken_seq}: {chain.reason}"))
    report.findings += _missing_records(paths, state)
    return report


def _missing_records(paths: JobPaths, state: Any) -> list[Finding]:
    """Records the journal says exist (gate results, checkpoints of iterations not pruned) that are not on disk."""
    out: list[Finding] = []
    pruned = set(state.pruned_iterations)
    for iteration, gates in sorted(state.gate_results.items()):
        if iteration in pruned:
            continue
        for gate in gates:
            record = paths.iteration_dir(iteration) / "gates" / f"{gate}.json"
            if not record.is_file():
                out.append(Finding("checkpoint_missing", str(record), f"iteration {iteration}: gate {gate}'s record"))
    for iteration in sorted(state.checkpoints):
        record = paths.iteration_dir(iteration) / "checkpoint.json"
        if iteration not in pruned and not record.is_file():
            out.append(Finding("checkpoint_missing", str(record), f"iteration {iteration}: the checkpoint record"))
    return out


def examine_path(root: Path, run_id: str, **kw: Any) -> DoctorReport:
    return examine(JobPaths(root, run_id), **kw)
