"""Per-stage engine overhead: 10 stages running ``true``, against bare Prefect tasks and a raw ``subprocess.run`` loop.

Each sample is one flow run, in a fresh process, on a Prefect server this
script starts. The cost of a stage is the time from one stage's start to the
next one's, so process start-up, flow set-up and the end of the run are left
out and everything the engine does between two stages is in:

* longrun: ``longrun run`` of a one-iteration job of 10 stages, each
  ``run: ["true"]``; the interval between consecutive ``stage_started``
  events in the journal (journal appends with fsync, the Prefect task with
  its persisted record, the stage's ``command.log``, ``stage_finished``);
* bare Prefect: a flow of 10 plain ``@task`` functions each running
  ``subprocess.run(["true"])`` (``bench/_bare.py stages 10``); the interval
  between consecutive task bodies starting;
* raw: ``subprocess.run(["true"])`` 10 times in a loop, in this process.

Per sample the median of the 9 intervals; printed, the median over samples.

Run: ``python bench/stages.py [--samples N]`` (default 7).
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import PY, REPO, PrefectServer, git_root, header, machine, med, row

STAGES = 10
SPEC = (
    """
name: ten-stages
goal: per-stage overhead
allowed_tools: ["true"]
plan_file: null
model_policy: {default: m}
stages:
"""
    + "".join(f'  - {{id: s{i}, run: ["true"]}}\n' for i in range(STAGES))
    + "stop_conditions: {max_iterations: 1}\n"
)


def _intervals(starts: list[float]) -> float:
    return statistics.median(b - a for a, b in itertools.pairwise(starts))


def longrun_sample(tmp: Path, env: dict, n: int) -> float:
    from longrun.journal.local import Journal
    from longrun.storage.paths import jobs_dir

    root = git_root(tmp / f"lr-{n}")
    (root / "job.yaml").write_text(SPEC)
    r = subprocess.run(
        [PY, "-m", "longrun.cli", "run", str(root / "job.yaml"), "--root", str(root)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode not in (0, 3):
        raise RuntimeError(f"longrun run exited {r.returncode}:\n{r.stderr[-3000:]}")
    events = Journal(next(jobs_dir(root).iterdir()) / "events.jsonl").read()
    starts = [e.ts.timestamp() for e in events if e.type == "stage_started"]
    assert len(starts) == STAGES, len(starts)
    return _intervals(starts)


def bare_sample(env: dict, cwd: Path) -> float:
    r = subprocess.run(
        [PY, str(REPO / "bench" / "_bare.py"), "stages", str(STAGES)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return _intervals(json.loads(r.stdout.strip().splitlines()[-1]))


def raw_sample() -> float:
    starts = []
    for _ in range(STAGES):
        starts.append(time.time())
        subprocess.run(["true"], check=True)
    return _intervals(starts)


def main(argv: list[str]) -> int:
    samples = int(argv[argv.index("--samples") + 1]) if "--samples" in argv else 7
    print(machine())
    print(f"per stage: start of one stage to the start of the next, median of {STAGES - 1} intervals per run")
    with tempfile.TemporaryDirectory(prefix="longrun-bench-") as t:
        tmp = Path(t)
        with PrefectServer(tmp / "server-home") as server:
            longrun_sample(tmp, server.env, 0)  # warm-up
            bare_sample(server.env, tmp)
            lr, bare, raw = [], [], []
            for i in range(1, samples + 1):
                lr.append(longrun_sample(tmp, server.env, i))
                bare.append(bare_sample(server.env, tmp))
                raw.append(raw_sample())
    print(header())
    print(row("per stage vs bare task", lr, bare, "bare Prefect @task running subprocess.run(['true'])", unit="ms"))
    print(row("per stage vs raw loop", lr, raw, "subprocess.run(['true']) loop", unit="ms"))
    print(row("bare task vs raw loop", bare, raw, "(Prefect's own cost per task)", unit="ms"))
    print(
        f"engine's own cost per stage over a bare task: {(med(lr) - med(bare)) * 1000:.1f} ms; "
        f"samples (ms) longrun {' '.join(f'{x * 1000:.0f}' for x in lr)} | bare {' '.join(f'{x * 1000:.0f}' for x in bare)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
