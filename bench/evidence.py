"""Evidence bundle cost: build and verify, against ``tar czf`` and plain hashing of the same files.

Builds a synthetic job (ITERATIONS iterations, each with a ``command.log`` of
LOG_MB megabytes of compressible text plus the small checkpoint files) and
prints, each measured in this run:

* build: ``build_bundle`` (deterministic tar.gz, every member hashed, manifest)
  against GNU ``tar -czf`` of the same directory (gzip level 6, as longrun);
* verify: ``verify`` (bundle sha256, every member re-hashed against the
  manifest) against ``hashlib.sha256`` over the raw files;
* the peak RSS of the build (``VmHWM``), in a fresh process, against that
  process's peak before building (the bundle streams: it should not grow
  with the log size).

Run: ``python bench/evidence.py [ITERATIONS] [LOG_MB]`` (default 4 iterations of 25 MB).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from longrun.evidence.bundle import build_bundle
from longrun.evidence.verify import verify
from longrun.journal.local import Journal
from longrun.journal.registry import register
from longrun.spec.loader import LoadedSpec, canonical_json, job_id_for, parse_spec_text
from longrun.storage.paths import JobPaths

SPEC = """
name: bench-evidence
goal: measure the evidence bundle
allowed_tools: [python]
model_policy: {default: m}
stages: [{id: a, run: [python, -c, "pass"]}]
"""


def make_job(root: Path, iterations: int, log_mb: int) -> str:
    spec = parse_spec_text(SPEC, file="bench.yaml")
    loaded = LoadedSpec(spec=spec, source=None, job_id=job_id_for(spec), canonical=canonical_json(spec))
    record = register(loaded, root)
    journal = Journal(record.paths.events_file)
    journal.append("run_started", {"run_id": "r", "resumed": False}, job_id=loaded.job_id)
    line = b"2026-11-22T00:00:00Z step ok: collected 120 items; 3 failed; retrying the flaky one\n"
    for it in range(1, iterations + 1):
        d = JobPaths(root, loaded.job_id).iteration_dir(it)
        d.mkdir(parents=True)
        with open(d / "command.log", "wb") as fh:
            for _ in range(log_mb * (1 << 20) // len(line)):
                fh.write(line)
        for name in ("summary.md", "plan-diff.md", "patch.diff", "test-report.json"):
            (d / name).write_text(f"{name} of iteration {it}\n" * 50)
        journal.append("iteration_started", {"iteration": it}, job_id=loaded.job_id)
        journal.append(
            "iteration_finished", {"iteration": it, "gates_passed": False, "fingerprint": str(it)}, job_id=loaded.job_id
        )
    return loaded.job_id


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def build_rss(root: Path, job_id: str) -> dict[str, int]:
    """Build in a fresh process; its RSS before and at peak (KB)."""
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so the child would start at this (parent) process's peak.
    code = (
        "import json, sys; from pathlib import Path; from longrun.evidence.bundle import build_bundle\n"
        "def hwm():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "before = hwm()\n"
        "build_bundle(Path(sys.argv[1]), sys.argv[2])\n"
        "print(json.dumps({'before_kb': before, 'peak_kb': hwm()}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(root), job_id], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def main(argv: list[str]) -> None:
    iterations = int(argv[0]) if argv else 4
    log_mb = int(argv[1]) if len(argv) > 1 else 25
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        job_id = make_job(root, iterations, log_mb)
        paths = JobPaths(root, job_id)
        files = [p for p in sorted(paths.checkpoints.rglob("*")) if p.is_file()] + [paths.events_file, paths.spec_file]
        total = sum(p.stat().st_size for p in files)
        mb = total / (1 << 20)

        build_s, bundle = timed(lambda: build_bundle(root, job_id))
        tar_s, _ = timed(
            lambda: subprocess.run(
                [
                    "tar",
                    "-czf",
                    str(root / "baseline.tar.gz"),
                    "-C",
                    str(paths.maestro),
                    f"checkpoints/{job_id}",
                    f"jobs/{job_id}",
                ],
                check=True,  # gzip -6 is its default level, as in longrun
            )
        )
        verify_s, report = timed(lambda: verify(bundle.manifest_path, bundle.tar_path))
        assert report.ok, report.mismatches

        def hash_all() -> None:
            for p in files:
                h = hashlib.sha256()
                with open(p, "rb") as fh:
                    while block := fh.read(1 << 20):
                        h.update(block)

        hash_s, _ = timed(hash_all)
        rss = build_rss(root, job_id)

        print(f"input: {iterations} iteration(s), {len(files)} files, {mb:.0f} MB; bundle {bundle.size / (1 << 20):.1f} MB")
        print(f"{'':<8} {'longrun':>10} {'baseline':>10} {'time x':>6}  baseline (time x: longrun's time over the baseline's)")
        print(f"{'build':<8} {mb / build_s:>7.0f} MB/s {mb / tar_s:>7.0f} MB/s {build_s / tar_s:>6.2f}  tar -czf (gzip -6)")
        print(
            f"{'verify':<8} {mb / verify_s:>7.0f} MB/s {mb / hash_s:>7.0f} MB/s {verify_s / hash_s:>6.2f}  sha256 of the raw files"
        )
        grow = (rss["peak_kb"] - rss["before_kb"]) / 1024
        print(
            f"build RSS: {rss['before_kb'] / 1024:.0f} MB before, {rss['peak_kb'] / 1024:.0f} MB at peak "
            f"(+{grow:.1f} MB for {mb:.0f} MB of input)"
        )
        shutil.rmtree(root / ".maestro")


if __name__ == "__main__":
    main(sys.argv[1:])
