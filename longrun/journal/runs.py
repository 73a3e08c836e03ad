"""Runs: a job is a definition, each intended run of it an instance with its own record.

Layout under ``.maestro/jobs/``::

    <jobId>/spec.json           the definition (canonical spec, write-once)
    <jobId>/runs/<runId>        the claim of one intended run (write-once JSON)
    <jobId>/lock                flock held while a run is chosen and started
    <runId>/spec.json           the run's own record, stored as a job is:
    <runId>/run.json              which job and which intended run it is,
    <runId>/events.jsonl          its journal, its STOP file, and under
                                  checkpoints/<runId>/ and evidence/<runId>.*
                                  its checkpoints and bundle
    <jobId>/events.jsonl        the job's first run without a key (and every
                                journal from before runs existed): its run id
                                is the job id, so a job that runs once is
                                stored as it always was

A run id is ``sha256("longrun-run", job id, key)[:12]``: the same intended run
(the same cron tick, the same ``--key``/idempotency key) is the same run by
construction, and the claim file is created with a compare-and-set
(:func:`longrun.atomicio.create_once`), so of two concurrent ticks exactly one
opens it and the other continues it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path

from longrun import atomicio
from longrun.errors import LongrunError
from longrun.journal.local import Journal
from longrun.storage import mirror
from longrun.storage.paths import JOB_ID_RE, JobPaths, check_job_id

#: A run in one of these states is over: a keyless start opens a new run instead, ``resume`` passes it by.
OVER = frozenset({"COMPLETED", "REJECTED"})
#: The key shown for a job's first keyless run, stored under the job's own id.
FIRST_RUN_KEY = "first"
#: Longest run key accepted (a cron time, an idempotency key, ``manual:<uuid>``).
RUN_KEY_MAX = 200
#: Run keys are printable and single-line.
_KEY_FORBIDDEN = {"\n", "\r", "\x00"}


def check_run_key(key: str) -> str:
    if not isinstance(key, str) or not key.strip() or len(key) > RUN_KEY_MAX or _KEY_FORBIDDEN & set(key):
        raise LongrunError(f"run key {key!r} must be 1 to {RUN_KEY_MAX} characters on one line", code="usage_error")
    return key


def run_id_for(job_id: str, key: str) -> str:
    """The id of the run of ``job_id`` that intended run ``key`` names (12 hex digits)."""
    digest = sha256(b"\0".join((b"longrun-run", check_job_id(job_id).encode(), check_run_key(key).encode())))
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class RunClaim:
    """One intended run of a job: which job, which key, what triggered it and when it was opened."""

    run_id: str
    job_id: str
    key: str
    trigger: str
    opened_at: str
    scheduled_for: str | None = None

    @property
    def legacy(self) -> bool:
        """The job's first keyless run (or a journal from before runs): its run id is the job id."""
        return self.run_id == self.job_id

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunClaim:
        data = json.loads(text)
        return cls(**{k: data.get(k) for k in ("run_id", "job_id", "key", "trigger", "opened_at", "scheduled_for")})


def runs_dir(root: Path, job_id: str) -> Path:
    return JobPaths(root, job_id).job_dir / "runs"


def claim_run(root: Path, job_id: str, key: str, *, trigger: str, scheduled_for: str | None = None) -> tuple[RunClaim, bool]:
    """Claim intended run ``key`` of ``job_id``: ``(claim, True)`` if this call opened it, else the existing claim."""
    run_id = run_id_for(job_id, key)
    path = runs_dir(root, job_id) / run_id
    claim = RunClaim(run_id, job_id, key, trigger, datetime.now(UTC).isoformat(), scheduled_for)
    created = mirror.create_once(path, claim.to_json() + "\n")
    return (claim if created else RunClaim.from_json(path.read_text(encoding="utf-8"))), created


def list_runs(root: Path, job_id: str) -> list[RunClaim]:
    """Every run of ``job_id``, oldest first (a pre-runs journal is the first)."""
    out: list[RunClaim] = []
    legacy = JobPaths(root, job_id).events_file
    sync_runs(root, job_id)
    if legacy.is_file():
        out.append(RunClaim(job_id, job_id, FIRST_RUN_KEY, "manual", _first_ts(legacy)))
    base = runs_dir(root, job_id)
    if base.is_dir():
        for entry in base.iterdir():
            if JOB_ID_RE.match(entry.name):
                try:
                    out.append(RunClaim.from_json(entry.read_text(encoding="utf-8")))
                except (OSError, ValueError, TypeError):
                    continue  # a claim being written; it shows once complete
    return sorted(out, key=lambda c: (c.opened_at, c.run_id))


def sync_runs(root: Path, job_id: str) -> None:
    """On a remote root: fetch the job's run claims and run records the mirror lacks, and the job's own journal.

    A run's journal is not fetched here: every read of a journal on a mirror fetches what it lacks
    (:meth:`Journal.sync`). No-op locally.
    """
    names = mirror.list_files(runs_dir(root, job_id))
    if names is None:
        return
    Journal(JobPaths(root, job_id).events_file).sync()  # a first keyless run's journal: list_runs looks for the file
    for name in names:
        if JOB_ID_RE.match(name):
            mirror.fetch(runs_dir(root, job_id) / name)
            fetch_record(JobPaths(root, name))


def fetch_record(paths: JobPaths) -> bool:
    """On a remote root: a job's or run's ``spec.json`` (and ``run.json``, written before it) into the mirror.

    True when the spec is there now. A local root: whether it exists.
    """
    if paths.spec_file.exists():
        return True
    if not mirror.fetch(paths.spec_file):
        return False
    mirror.fetch(paths.job_dir / "run.json")
    return True


def _first_ts(journal: Path) -> str:
    """When a journal began: its first line's ``ts`` (a corrupt journal is reported by whoever reads it)."""
    try:
        with open(journal, "rb") as fh:
            ts = json.loads(fh.readline()).get("ts")
    except (OSError, ValueError, AttributeError):
        return ""
    if not isinstance(ts, str):
        return ""
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).isoformat()
    except ValueError:
        return ""


def read_claim(root: Path, run_id: str) -> RunClaim | None:
    """The claim stored with a run's record (``jobs/<runId>/run.json``), None for a job's own (legacy) journal."""
    path = JobPaths(root, run_id).job_dir / "run.json"
    try:
        return RunClaim.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def write_run_record(root: Path, claim: RunClaim, canonical_spec: str) -> JobPaths:
    """The run's ``run.json`` and own spec copy (both write-once); returns its paths.

    ``run.json`` goes first: whoever sees a run's ``spec.json`` (in a mirror's store, too) sees it is a run.
    """
    paths = JobPaths(root, claim.run_id)
    mirror.write_once(paths.job_dir / "run.json", claim.to_json() + "\n")
    mirror.write_once(paths.spec_file, canonical_spec + "\n")
    return paths


#: How long a start waits for another start of the same job to finish choosing its run.
LOCK_WAIT_S = 60.0


class JobLock:
    """An exclusive ``flock`` on ``jobs/<jobId>/lock``, held from choosing a run until it has started.

    Two starts of one job are serialised: the second sees the first's
    ``run_started`` (with its live pid), never a check-then-write gap.
    ``release`` is idempotent, so the engine can let go as soon as its run started.
    """

    def __init__(self, root: Path, job_id: str, *, wait_s: float = LOCK_WAIT_S) -> None:
        self.path = JobPaths(root, job_id).job_dir / "lock"
        self.wait_s = wait_s
        self._fd: int | None = None
        # On a remote root the lock is a lease in the store (compare-and-set writes), not a flock.
        self._lease = mirror.Lease(self.path, uuid.uuid4().hex) if mirror.locate(self.path) is not None else None

    def acquire(self) -> JobLock:
        if self._lease is not None:
            self._lease.acquire(self.wait_s)
            return self
        fd = atomicio.open_for_update(self.path)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LongrunError(
                        f"another start of this job has held {self.path} for {self.wait_s:g}s", code="job_already_running"
                    ) from None
                time.sleep(0.05)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._lease is not None:
            self._lease.release()
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    @contextmanager
    def held(self) -> Iterator[JobLock]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()
