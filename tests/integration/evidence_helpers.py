"""Helpers shared by the evidence tests: a real job on disk, hand-made tars."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conftest import EXAMPLES

from longrun.journal.local import Journal
from longrun.journal.registry import register
from longrun.spec import load_spec
from longrun.storage.paths import JobPaths

T0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        self.t += timedelta(seconds=1)
        return self.t


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_job(root: Path, *, approvals: bool = True, waiver: bool = False) -> JobPaths:
    """A registered job with two finished iterations, its checkpoints and journal."""
    loaded = load_spec(EXAMPLES / "fix-failing-test.yaml")
    record = register(loaded, root)
    job = record.job_id
    j = Journal(record.paths.events_file, clock=Clock())
    j.append("run_started", {"run_id": "run-1", "flow_run_id": "fr-1"}, job_id=job)
    for it in (1, 2):
        passed = it == 2
        j.append("iteration_started", {"iteration": it}, job_id=job)
        j.append("stage_started", {"iteration": it, "stage": "execute", "model": "large-careful"}, job_id=job)
        j.append(
            "stage_finished",
            {
                "iteration": it,
                "stage": "execute",
                "exit_code": 0,
                "duration_s": 1.5,
                "model": "large-careful",
                "usage": {"usd": 0.05, "tokens": 5000},
            },
            job_id=job,
        )
        j.append(
            "gate_evaluated",
            {
                "iteration": it,
                "gate": "tests",
                "kind": "test_pass",
                "required": True,
                "passed": passed,
                "evidence": {"tests": 3, "passed": 3 if passed else 2, "log": "/somewhere/command.log"},
            },
            job_id=job,
        )
        d = record.paths.iteration_dir(it)
        files = {
            "plan-diff.md": f"# Plan diff — iteration {it}\n",
            "patch.diff": f"diff --git a/x b/x\n+fix {it}\n",
            "command.log": f"$ python -m pytest\n{'3 passed' if passed else '1 failed, 2 passed'}\n",
            "test-report.json": json.dumps({"tests": 3, "passed": 3 if passed else 2}) + "\n",
            "summary.md": f"# iteration {it}\n",
            "stages/execute.json": '{"kind": "stage"}\n',
        }
        for name, text in files.items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(text)
        # Transient or foreign files that never go into a bundle.
        (d / "running").mkdir(exist_ok=True)
        (d / "running" / "execute.pgid").write_text("12345\n")
        (d / ".summary.md.x1y2.tmp").write_text("half-written")
        (d / "outside-link").symlink_to("/etc/hostname")
        j.append("checkpoint_written", {"iteration": it, "dir": str(d), "files": {}}, job_id=job)
        j.append("iteration_finished", {"iteration": it, "gates_passed": passed, "fingerprint": f"fp{it}"}, job_id=job)
    if approvals:
        j.append("approved", {"step": "merge", "iteration": 2, "approver": "alice", "comment": "lgtm"}, job_id=job)
    j.append("run_completed", {"iteration": 2, "reason": "all required gates passed"}, job_id=job)
    if waiver:
        w = root / ".maestro" / "waivers" / "longrun.json"
        w.parent.mkdir(parents=True, exist_ok=True)
        w.write_text(
            json.dumps({"reason": "release excludes jobs", "expires_at": "2030-01-01T00:00:00Z", "approved_by": "captain"})
        )
    return record.paths


def members(tar_path: Path) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out = {}
    with tarfile.open(tar_path, "r:gz") as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m)
            out[m.name] = (m, f.read() if f else b"")
    return out


def write_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    """A tar.gz written by hand (for crafted, malicious or tampered bundles)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in entries:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(buf.getvalue())


def reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data
