"""The job registry under a root: register a spec, find a job, list jobs.

A job is identified by its deterministic id (SPEC S3). Registering writes the
canonical spec once (immutable) and the first journal event; registering the
same spec again is a no-op.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from longrun import atomicio
from longrun.errors import JobNotFound
from longrun.journal.local import Journal
from longrun.journal.payloads import RunFailed, RunStarted
from longrun.journal.state import RunState

if TYPE_CHECKING:
    from longrun.spec.loader import LoadedSpec

from longrun.storage.paths import JOB_ID_RE, JobPaths, jobs_dir


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    name: str
    paths: JobPaths

    @property
    def journal(self) -> Journal:
        return Journal(self.paths.events_file)

    def state(self) -> RunState:
        return self.journal.state()

    def outcome(self, run_id: str | None = None) -> dict:
        return outcome_dict(self.job_id, self.name, self.state(), run_id)

    def last_failure(self) -> dict | None:
        """Code and message of the last ``run_failed`` event, if the job failed."""
        for event in reversed(self.journal.read()):
            if isinstance(event.payload, RunFailed):
                return {"code": event.payload.code, "message": event.payload.message}
        return None

    def load(self) -> LoadedSpec:
        """The stored canonical spec, under the job's stored id.

        The id is not recomputed: a newer longrun may add defaulted fields,
        which would change the hash of the same spec and orphan the job.
        """
        from longrun.spec.loader import load_canonical  # the spec models load only when a spec is needed

        text = self.paths.spec_file.read_text(encoding="utf-8")
        loaded = load_canonical(text, file=str(self.paths.spec_file))
        return replace(loaded, job_id=self.job_id, canonical=text.rstrip("\n"))


def register(loaded: LoadedSpec, root: Path) -> JobRecord:
    paths = JobPaths(root, loaded.job_id)
    atomicio.write_once(paths.spec_file, loaded.canonical + "\n")
    journal = Journal(paths.events_file)
    if journal.state().last_seq == 0:
        journal.append(
            "job_registered",
            {
                "job_id": loaded.job_id,
                "name": loaded.spec.name,
                "spec_sha256": hashlib.sha256(loaded.canonical.encode("utf-8")).hexdigest(),
                "source": str(loaded.source) if loaded.source else None,
                "root": str(root),
            },
            job_id=loaded.job_id,
        )
    return JobRecord(loaded.job_id, loaded.spec.name, paths)


def find_job(root: Path, ref: str) -> JobRecord:
    """A job by id, id prefix (unique) or name (the one with the latest journal activity wins)."""
    base = jobs_dir(root)
    if JOB_ID_RE.match(ref):
        paths = JobPaths(root, ref)
        if paths.spec_file.exists():
            return record_at(paths)
        raise JobNotFound(f"no job {ref!r} under {root}")
    if not ref or len(ref) > 64 or not all(c.isalnum() or c in "-_" for c in ref):
        raise JobNotFound(f"{ref!r} is neither a job id nor a job name")
    matches = [r for r in list_jobs(root) if r.name == ref or r.job_id.startswith(ref)]
    if not matches:
        raise JobNotFound(f"no job named {ref!r} under {base}")
    by_name = [r for r in matches if r.name == ref]
    if len(by_name) > 1:
        # The same name with different specs: pick the latest activity.
        return max(by_name, key=lambda r: r.paths.events_file.stat().st_mtime if r.paths.events_file.exists() else 0)
    if len(matches) > 1 and not by_name:
        raise JobNotFound(f"{ref!r} matches several jobs: {', '.join(r.job_id for r in matches)}")
    return (by_name or matches)[0]


def live_local_pid(started: RunStarted | None) -> int | None:
    """The pid a ``run_started`` payload names, if that process is alive on this host.

    A SIGKILLed engine leaves a RUNNING journal behind, so only a live pid
    counts. None for a run on another host (ask Prefect), or one whose pid is gone.
    """
    if started is None or started.pid is None or started.host != socket.gethostname():
        return None
    try:
        os.kill(started.pid, 0)
    except (ProcessLookupError, PermissionError):
        return None
    return started.pid


def list_jobs(root: Path) -> list[JobRecord]:
    base = jobs_dir(root)
    if not base.is_dir():
        return []
    out = []
    for d in sorted(base.iterdir()):
        if d.is_dir() and JOB_ID_RE.match(d.name) and (d / "spec.json").exists():
            out.append(record_at(JobPaths(root, d.name)))
    return out


def record_at(paths: JobPaths) -> JobRecord:
    state = Journal(paths.events_file).state() if paths.events_file.exists() else None
    name = state.name if state and state.name else paths.job_id
    return JobRecord(paths.job_id, name, paths)


def outcome_dict(job_id: str, name: str, s: RunState, run_id: str | None) -> dict:
    """The result of a run, the same shape whether or not anything ran."""
    return {
        "job_id": job_id,
        "name": name,
        "status": str(s.status),
        "reason": s.stop_reason,
        "iterations": s.iterations_finished,
        "usd": round(s.usd_total, 6),
        "tokens": s.tokens_total,
        "run_id": run_id,
    }
