"""The job registry under a root: define a job, open its runs, find a job or run, list jobs.

A job is identified by its deterministic id (SPEC S3); each intended run of
it has its own id and record (:mod:`longrun.journal.runs`). ``JOB`` names a
job's latest run, ``JOB@RUN`` one run (its id or a unique prefix, its
1-based number, or its key). :func:`register` records a job under its own id
with a journal of its own: how jobs were stored before runs, and how spawned
children are stored.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longrun.errors import JobNotFound, LongrunError, SpecImmutable
from longrun.journal.local import Journal
from longrun.journal.payloads import RunFailed, RunStarted
from longrun.journal.runs import RunClaim, fetch_record, list_runs, read_claim, write_run_record
from longrun.journal.state import RunState

if TYPE_CHECKING:
    from longrun.spec.loader import LoadedSpec

from longrun.storage import mirror
from longrun.storage.paths import JOB_ID_RE, JobPaths, jobs_dir


@dataclass(frozen=True)
class JobRecord:
    """One run's record (or a job with no run yet): ``job_id`` is where it is stored, ``job`` the job it runs."""

    job_id: str
    name: str
    paths: JobPaths
    #: The job (definition) id; equal to ``job_id`` for a job's own journal.
    job: str = ""
    claim: RunClaim | None = None

    @property
    def definition(self) -> str:
        return self.job or self.job_id

    @property
    def run_ref(self) -> str:
        """How to name this run on the command line: ``JOB@RUN``, or the job id for a job's own journal."""
        return self.job_id if self.definition == self.job_id else f"{self.definition}@{self.job_id}"

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


def _refuse_lost_journal(paths: JobPaths) -> None:
    """A run with checkpoints or evidence but no journal lost its record: never start it over silently."""
    if paths.events_file.exists():
        return
    if paths.checkpoints.exists() or any(paths.evidence_dir.glob(f"{paths.job_id}.*")):
        raise LongrunError(
            f"{paths.events_file} is missing, but the run has checkpoints or evidence: its journal was deleted. "
            "Restore it (an evidence bundle holds a copy), or start another run with --key",
            code="journal_missing",
        )


def store_spec(path: Path, loaded: LoadedSpec) -> str:
    """Write the canonical spec to ``path`` once; returns the text stored there (without its final newline).

    A file written by an older longrun holds fewer defaulted fields than this
    one would write; it stays as it is when it is the same job (the same id,
    which ignores defaults). Anything else is ``job_spec_immutable``.
    """
    try:
        mirror.write_once(path, loaded.canonical + "\n")
        return loaded.canonical
    except SpecImmutable:
        from longrun.spec.loader import job_id_for, load_canonical

        stored = path.read_text(encoding="utf-8").rstrip("\n")
        try:
            same = job_id_for(load_canonical(stored, file=str(path)).spec) == job_id_for(loaded.spec)
        except LongrunError:
            same = False
        if not same:
            raise
        return stored


def register(loaded: LoadedSpec, root: Path) -> JobRecord:
    paths = JobPaths(root, loaded.job_id)
    _refuse_lost_journal(paths)
    stored = store_spec(paths.spec_file, loaded)
    _first_event(paths, loaded, stored, root)
    return JobRecord(loaded.job_id, loaded.spec.name, paths)


def define(loaded: LoadedSpec, root: Path) -> JobPaths:
    """Write the job's canonical spec once (a job with runs has no journal of its own)."""
    paths = JobPaths(root, loaded.job_id)
    store_spec(paths.spec_file, loaded)
    return paths


def open_run(loaded: LoadedSpec, root: Path, claim: RunClaim) -> JobRecord:
    """The record of run ``claim`` of the job: its spec copy, ``run.json`` and first event (each once)."""
    if claim.legacy:
        return register(loaded, root)
    _refuse_lost_journal(JobPaths(root, claim.run_id))
    paths = write_run_record(root, claim, loaded.canonical)
    run = {"job": claim.job_id, "run_key": claim.key, "trigger": claim.trigger, "scheduled_for": claim.scheduled_for}
    _first_event(paths, loaded, loaded.canonical, root, run)
    return JobRecord(claim.run_id, loaded.spec.name, paths, claim.job_id, claim)


def _first_event(paths: JobPaths, loaded: LoadedSpec, spec_text: str, root: Path, run: dict[str, Any] | None = None) -> None:
    """``job_registered`` into a journal that has no event yet (it is not read beyond its first line)."""
    journal = Journal(paths.events_file)
    if not journal.is_empty():
        return
    journal.append(
        "job_registered",
        {
            "job_id": paths.job_id,
            "name": loaded.spec.name,
            "spec_sha256": hashlib.sha256(spec_text.encode("utf-8")).hexdigest(),
            "source": str(loaded.source) if loaded.source else None,
            "root": str(root),
            **(run or {}),
        },
        job_id=paths.job_id,
    )


def find_job(root: Path, ref: str) -> JobRecord:
    """A run by ``JOB`` (the job's latest run), ``JOB@RUN`` or a run id.

    ``JOB`` is a job id, a unique id prefix or a name (the one with the latest
    journal activity wins); ``RUN`` a run id or unique prefix, a run's 1-based
    number, or its key.
    """
    job_ref, at, run_ref = ref.partition("@")
    job = _find_definition(root, job_ref)
    if job.claim is not None:  # a run id given directly
        if at:
            raise JobNotFound(f"{job_ref!r} is a run, not a job; name its runs as JOB@RUN")
        return job
    runs = list_runs(root, job.job_id)
    if not at:
        return run_record(root, runs[-1]) if runs else job
    return run_record(root, _pick_run(job, runs, run_ref))


def _pick_run(job: JobRecord, runs: list[RunClaim], ref: str) -> RunClaim:
    by_id = [c for c in runs if c.run_id == ref] or ([c for c in runs if c.run_id.startswith(ref)] if len(ref) >= 4 else [])
    if len(by_id) == 1:
        return by_id[0]
    if ref.isdigit() and 1 <= int(ref) <= len(runs):
        return runs[int(ref) - 1]
    by_key = [c for c in runs if c.key == ref]
    if by_key:
        return by_key[0]
    if len(by_id) > 1:
        raise JobNotFound(f"{ref!r} matches several runs of {job.job_id}: {', '.join(c.run_id for c in by_id)}")
    raise JobNotFound(f"job {job.name} ({job.job_id}) has no run {ref!r} ({len(runs)} run(s); see: longrun runs {job.job_id})")


def run_record(root: Path, claim: RunClaim) -> JobRecord:
    rec = record_at(JobPaths(root, claim.run_id))
    return JobRecord(rec.job_id, rec.name, rec.paths, claim.job_id, None if claim.legacy else claim)


def _find_definition(root: Path, ref: str) -> JobRecord:
    base = jobs_dir(root)
    if JOB_ID_RE.match(ref):
        paths = JobPaths(root, ref)
        if fetch_record(paths):
            claim = read_claim(root, ref)
            rec = record_at(paths)
            return JobRecord(rec.job_id, rec.name, paths, claim.job_id if claim else ref, claim)
        raise JobNotFound(f"no job {ref!r} under {root}")
    if not ref or len(ref) > 64 or not all(c.isalnum() or c in "-_" for c in ref):
        raise JobNotFound(f"{ref!r} is neither a job id nor a job name")
    matches = [r for r in list_jobs(root, latest_run=False) if r.name == ref or r.job_id.startswith(ref)]
    if not matches:
        raise JobNotFound(f"no job named {ref!r} under {base}")
    by_name = [r for r in matches if r.name == ref]
    if len(by_name) > 1:
        # The same name with different specs: pick the latest activity.
        return max(by_name, key=_activity)
    if len(matches) > 1 and not by_name:
        raise JobNotFound(f"{ref!r} matches several jobs: {', '.join(r.job_id for r in matches)}")
    return (by_name or matches)[0]


def _activity(record: JobRecord) -> float:
    runs = list_runs(record.paths.root, record.job_id)
    files = [JobPaths(record.paths.root, c.run_id).events_file for c in runs] or [record.paths.spec_file]
    return max((f.stat().st_mtime for f in files if f.exists()), default=0.0)


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


def list_jobs(root: Path, *, latest_run: bool = True) -> list[JobRecord]:
    """Every job under ``root`` (not its runs), each as its latest run's record unless ``latest_run`` is False."""
    base = jobs_dir(root)
    for name in mirror.list_names(base) or ():  # a remote root: every job and run the store holds
        if JOB_ID_RE.match(name):
            fetch_record(JobPaths(root, name))
    if not base.is_dir():
        return []
    out = []
    for d in sorted(base.iterdir()):
        if d.is_dir() and JOB_ID_RE.match(d.name) and (d / "spec.json").exists() and not (d / "run.json").exists():
            job = record_at(JobPaths(root, d.name))
            runs = list_runs(root, d.name) if latest_run else []
            if runs and not runs[-1].legacy:
                rec = run_record(root, runs[-1])
                job = JobRecord(rec.job_id, rec.name if rec.name != rec.job_id else job.name, rec.paths, d.name, runs[-1])
            out.append(JobRecord(job.job_id, job.name, job.paths, d.name, job.claim))
    return out


def record_at(paths: JobPaths) -> JobRecord:
    try:
        state = Journal(paths.events_file).state()
    except LongrunError:  # a corrupt journal: found by its id all the same; reading its state says what is wrong
        state = None
    name = state.name if state and state.name else None
    if name is None and paths.spec_file.exists():
        name = _spec_name(paths)
    return JobRecord(paths.job_id, name or paths.job_id, paths)


def _spec_name(paths: JobPaths) -> str | None:
    """A job's name from its stored spec, without loading the spec models (it has no journal yet)."""
    import json

    try:
        data = json.loads(paths.spec_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    spec = data.get("spec", data) if isinstance(data, dict) else None
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) else None


def outcome_dict(job_id: str, name: str, s: RunState, run_id: str | None) -> dict:
    """The result of a run, the same shape whether or not anything ran."""
    job = s.job or job_id
    return {
        "job_id": job_id,
        "job": job,
        "run_ref": job_id if job == job_id else f"{job}@{job_id}",
        "run_key": s.run_key,
        "name": name,
        "status": str(s.status),
        "reason": s.stop_reason,
        "iterations": s.iterations_finished,
        "usd": round(s.usd_total, 6),
        "tokens": s.tokens_total,
        #: The Prefect flow run that ran (or last ran) it.
        "run_id": run_id,
    }
