"""Per-iteration cost of the engine as a job grows (issue: flat per-iteration cost).

A no-op job (one stage, one gate that always fails, ``max_iterations`` = the
largest count) runs for N iterations. Each iteration's time is taken from the
journal (``iteration_started`` → the next one); the figure at n is the median
over the 10 iterations ending at n (from iteration 2: the first pays for imports),
and the median of 3 runs. Wall time and the process's CPU time are both printed:
the CPU time is what the engine computes, and is steady on a shared, noisy
machine; the wall time adds the fsync waits of the journal. Two settings:

* ``engine`` (default): the engine with the real local journal (fsync'd
  appends) and record store on disk, and no-op executor/approver/progress
  ports — what the engine itself costs per iteration;
* ``--prefect``: the real job flow on Prefect (stage, gate and checkpoint
  tasks with result persistence) on the server ``PREFECT_API_URL`` names, or
  else on a ``prefect server start`` this script starts on 127.0.0.1 (a
  throw-away ``PREFECT_HOME``) and stops at the end.

Baseline, measured in the same run: the same number of journal lines written
with ``write`` + ``fsync`` per iteration (the floor of the engine's own I/O).

Run: ``python bench/iterations.py [--prefect] [N ...]`` (default N: 10 200 1000).
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

SPEC = """
name: noop
goal: measure the engine
workspace: {{path: ws}}
allowed_tools: ["true", "false"]
model_policy: {{default: m}}
stages:
  - {{id: noop, run: ["true"]}}
quality_gates:
  required:
    - {{id: never, kind: command_pass, run: ["false"]}}
on_failure: {{action: retry, max_retries: 1000}}
stop_conditions: {{max_iterations: {n}, no_progress_iterations: null}}
"""


def _job(root: Path, n: int):
    import subprocess

    from longrun.spec.loader import load_spec

    (root / "ws").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(root / "ws")], check=True)
    (root / "job.yaml").write_text(SPEC.format(n=n))
    return load_spec(root / "job.yaml")


class _Null:
    """No-op executor, workspace, approver and progress ports: only the engine's own work is timed."""

    def __init__(self, records) -> None:
        self.records = records
        #: (iteration, wall clock, process CPU time) when each iteration ended.
        self.marks: list[tuple[int, float, float]] = []

    # executor
    def run_stage(self, rt, stage, iteration, attempt):
        from longrun.execution.checkpoint import StageResult

        return StageResult(
            job_id=rt.job_id, iteration=iteration, stage=stage.id, phase=stage.phase, model=stage.model,
            argv=list(stage.argv), exit_code=0, timed_out=False, duration_s=0.0, attempts=attempt,
        )  # fmt: skip

    def evaluate_gate(self, rt, gate, iteration, inp):
        from longrun.execution.checkpoint import GateResult

        return GateResult(job_id=rt.job_id, iteration=iteration, gate=gate.id, gate_kind=gate.kind, required=True, passed=False)

    def write_checkpoint(self, rt, iteration, stages, gates, patch, usd, tokens):
        from longrun.execution.checkpointing import build_checkpoint

        return build_checkpoint(rt, iteration, stages, gates, patch, usd, tokens)

    # workspace
    def prepare(self, rt, template_base):
        pass

    def snapshot(self, path):
        return "t"

    def diff(self, path, a, b):
        return ""

    def changed(self, path, a, b):
        return []

    # approver / progress
    def where(self):
        return {}

    def wait(self, request):
        return None

    def say(self, line):
        pass

    def event(self, event):
        pass

    def iteration_done(self, iteration, *args):
        self.marks.append((iteration, time.perf_counter(), time.process_time()))

    def evidence(self, outcome):
        pass


def run_engine(root: Path, n: int) -> dict[int, tuple[float, float]]:
    from longrun.engine.loop import run_job
    from longrun.engine.session import Ports, Session
    from longrun.execution.checkpointing import JobRecords
    from longrun.execution.runtime import JobRuntime
    from longrun.journal.local import Journal
    from longrun.journal.registry import register

    loaded = _job(root, n)
    register(loaded, root)
    rt = JobRuntime(loaded=loaded, root=root, run_id="bench")
    null = _Null(JobRecords(rt.paths))
    ports = Ports(
        journal=Journal(rt.paths.events_file), records=null.records, executor=null, workspace=null, approver=null, progress=null
    )
    run_job(Session(rt, ports))
    m = null.marks
    return {b[0]: (b[1] - a[1], b[2] - a[2]) for a, b in itertools.pairwise(m)}


def run_prefect(root: Path, n: int) -> None:
    from longrun.flows.job import job_flow

    loaded = _job(root, n)
    job_flow(loaded)(spec=loaded.spec.model_dump(mode="json"), root=str(root), source=str(root / "job.yaml"))


def per_iteration(root: Path) -> dict[int, float]:
    from longrun.journal.local import Journal
    from longrun.storage.paths import jobs_dir

    events_file = next(jobs_dir(root).iterdir()) / "events.jsonl"
    starts = [e.ts for e in Journal(events_file).read() if e.type == "iteration_started"]
    return {i + 1: (b - a).total_seconds() for i, (a, b) in enumerate(itertools.pairwise(starts))}


def raw_fsync_lines(lines_per_iteration: int, iterations: int, tmp: Path) -> float:
    """Seconds per iteration to write the same number of ~300-byte lines with write + fsync."""
    line = b"x" * 300 + b"\n"
    fd = os.open(tmp / "raw.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        t0 = time.perf_counter()
        for _ in range(iterations * lines_per_iteration):
            os.write(fd, line)
            os.fsync(fd)
        return (time.perf_counter() - t0) / iterations
    finally:
        os.close(fd)


def _window(times: dict[int, float], n: int) -> float:
    """Median over the 10 iterations ending at n (from iteration 2: the first pays for imports)."""
    return statistics.median(times[i] for i in range(max(2, n - 9), n + 1) if i in times)


def main(argv: list[str]) -> int:
    prefect = "--prefect" in argv
    counts = sorted(int(a) for a in argv if not a.startswith("--")) or [10, 200, 1000]
    top = max(counts)
    repeats = 1 if prefect else 3
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    wall: dict[int, list[float]] = {n: [] for n in counts}
    cpu: dict[int, list[float]] = {n: [] for n in counts}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="longrun-bench-") as tmp:
        server = None
        if prefect and not os.environ.get("PREFECT_API_URL"):
            from _common import PrefectServer

            server = PrefectServer(Path(tmp) / "server-home").start()
            server.wait()
            os.environ.update(PREFECT_API_URL=server.url, PREFECT_HOME=str(server.home))
        try:
            for r in range(repeats):
                root = Path(tmp) / f"job{r}"
                if prefect:
                    run_prefect(root, top)
                    wall_times = per_iteration(root)
                    cpu_times: dict[int, float] = {}
                else:
                    both = run_engine(root, top)
                    wall_times = {i: w for i, (w, _) in both.items()}
                    cpu_times = {i: c for i, (_, c) in both.items()}
                for n in counts:
                    wall[n].append(_window(wall_times, n))
                    if cpu_times:
                        cpu[n].append(_window(cpu_times, n))
        finally:
            if server is not None:
                server.stop()
        floor = raw_fsync_lines(6, 200, Path(tmp))
    mode = "prefect" if prefect else "engine"
    print(
        f"{mode}: {repeats} run(s) of {top} iterations in {time.perf_counter() - t0:.1f} s ({datetime.now(UTC):%Y-%m-%d}, python {sys.version.split()[0]})"
    )
    print(f"baseline: 6 journal-sized lines written with write+fsync: {floor * 1000:.2f} ms per iteration")
    print(
        f"{'at iteration':>12} {'wall ms':>8} {'x base':>7} {'x at ' + str(counts[0]):>7}"
        + (f" {'cpu ms':>7} {'x at ' + str(counts[0]):>7}" if not prefect else "")
    )
    w0 = statistics.median(wall[counts[0]])
    c0 = statistics.median(cpu[counts[0]]) if cpu[counts[0]] else 0.0
    for n in counts:
        w = statistics.median(wall[n])
        line = f"{n:>12} {w * 1000:>8.2f} {w / floor:>7.2f} {w / w0:>7.2f}"
        if cpu[n]:
            c = statistics.median(cpu[n])
            line += f" {c * 1000:>7.2f} {c / c0:>7.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
