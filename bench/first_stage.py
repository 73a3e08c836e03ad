"""Time to the first stage, and resume latency after SIGKILL, each beside bare Prefect in the same run.

Every sample is a fresh process, so interpreter start and imports count, as
a user meets them. Samples of longrun and of its baseline alternate.

* ``reused``: ``python -m longrun.cli run SPEC --root DIR`` of a one-stage job
  (the stage runs ``sh -c 'date +%s.%N > started'``) against a Prefect server
  this script starts and leaves running (``PREFECT_API_URL``): seconds from
  just before the process is spawned to the time written by the stage. The
  baseline is ``bench/_bare.py first``: a bare flow whose first task runs
  the same command, on the same server. One run of each is a warm-up (not
  counted): the target is for second and later runs.
* ``ephemeral``: the same without ``PREFECT_API_URL`` (and with
  ``LONGRUN_EPHEMERAL=1``): each process starts Prefect's embedded server on
  a ``PREFECT_HOME`` whose database the warm-up run already migrated.
* ``resume``: ``longrun run`` of a job whose second stage sleeps; once it
  sleeps the engine process alone is SIGKILLed; then ``longrun resume JOB``
  is timed until the next ``stage_started`` in the journal (the killed
  stage, run again). Baseline: a fresh ``longrun run`` of a fresh one-stage
  job on the same server, timed until its ``stage_started``.

Run: ``python bench/first_stage.py [reused] [ephemeral] [resume] [--samples N] [--ephemeral-samples N]``
(default: all three; 7 samples, 3 on the ephemeral path).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BASE_ENV, PY, REPO, PrefectServer, git_root, header, machine, row

FIRST = """
name: first-stage
goal: time to first stage
allowed_tools: [sh]
plan_file: null
model_policy: {{default: m}}
stages:
  - {{id: stamp, run: [sh, -c, "date +%s.%N > {stamp}"]}}
stop_conditions: {{max_iterations: 1}}
"""

KILLME = """
name: resume-latency
goal: resume after SIGKILL
allowed_tools: [sh]
plan_file: null
model_policy: {{default: m}}
stages:
  - {{id: first, run: [sh, -c, "true"]}}
  - {{id: slow, run: [sh, -c, "if [ -e {marker} ]; then exit 0; fi; echo $$ > {marker}; exec sleep 300"], timeout: 600}}
stop_conditions: {{max_iterations: 1}}
"""

BARE = str(REPO / "bench" / "_bare.py")


def _spawn(argv: list[str], env: dict, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.time()
    r = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    if r.returncode not in (0, 3):  # 3: STOPPED (max_iterations) is how the one-iteration job ends
        raise RuntimeError(f"{argv} exited {r.returncode}:\n{r.stdout}\n{r.stderr[-3000:]}")
    return t0, r


def longrun_first(tmp: Path, env: dict, n: int) -> float:
    root = git_root(tmp / f"lr-{n}")
    stamp = root / "started"
    (root / "job.yaml").write_text(FIRST.format(stamp=stamp))
    t0, _ = _spawn([PY, "-m", "longrun.cli", "run", str(root / "job.yaml"), "--root", str(root)], env, root)
    return float(stamp.read_text()) - t0


def bare_first(tmp: Path, env: dict, n: int) -> float:
    d = tmp / f"bare-{n}"
    d.mkdir(parents=True)
    stamp = d / "started"
    t0, _ = _spawn([PY, BARE, "first", str(stamp)], env, d)
    return float(stamp.read_text()) - t0


def first_stage(tmp: Path, env: dict, samples: int, label: str) -> None:
    longrun_first(tmp, env, 0)  # warm-up: registers the flow, fills the page cache, migrates an ephemeral DB
    bare_first(tmp, env, 0)
    lr, bare = [], []
    for i in range(1, samples + 1):
        lr.append(longrun_first(tmp, env, i))
        bare.append(bare_first(tmp, env, i))
    print(row(label, lr, bare, "bare Prefect flow, first task"), flush=True)
    print(f"{'':<28}longrun: {' '.join(f'{x:.2f}' for x in lr)}  bare: {' '.join(f'{x:.2f}' for x in bare)}")


def _journal_stage_started(root: Path, after: float) -> float:
    from longrun.journal.local import Journal
    from longrun.storage.paths import jobs_dir

    events = Journal(next(jobs_dir(root).iterdir()) / "events.jsonl").read()
    return next(e.ts.timestamp() for e in events if e.type == "stage_started" and e.ts.timestamp() > after)


def resume_once(tmp: Path, env: dict, n: int) -> float:
    root = git_root(tmp / f"kill-{n}")
    marker = root / "slept"
    (root / "job.yaml").write_text(KILLME.format(marker=marker))
    proc = subprocess.Popen(
        [PY, "-m", "longrun.cli", "run", str(root / "job.yaml"), "--root", str(root)],
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (marker.exists() and marker.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"stage 'slow' never started (exit {proc.poll()})")
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)  # the engine alone: its stage is orphaned, as in a crash
    proc.wait(timeout=30)
    orphan = int(marker.read_text())
    job_id = next((root / ".maestro" / "jobs").iterdir()).name
    try:
        t0, _ = _spawn([PY, "-m", "longrun.cli", "resume", job_id, "--root", str(root)], env, root)
        return _journal_stage_started(root, t0) - t0
    finally:
        try:
            os.kill(orphan, signal.SIGKILL)  # resume ends it first; this only covers a failed resume
        except ProcessLookupError:
            pass


def fresh_once(tmp: Path, env: dict, n: int) -> float:
    root = git_root(tmp / f"fresh-{n}")
    (root / "job.yaml").write_text(FIRST.format(stamp=root / "started"))
    t0, _ = _spawn([PY, "-m", "longrun.cli", "run", str(root / "job.yaml"), "--root", str(root)], env, root)
    return _journal_stage_started(root, t0) - t0


def resume(tmp: Path, env: dict, samples: int) -> None:
    fresh_once(tmp, env, 0)  # warm-up
    res, fresh = [], []
    for i in range(1, samples + 1):
        res.append(resume_once(tmp, env, i))
        fresh.append(fresh_once(tmp, env, i))
    print(row("resume after SIGKILL", res, fresh, "fresh `longrun run`, first stage"), flush=True)
    print(f"{'':<28}resume: {' '.join(f'{x:.2f}' for x in res)}  fresh: {' '.join(f'{x:.2f}' for x in fresh)}")


def main(argv: list[str]) -> int:
    samples = int(argv[argv.index("--samples") + 1]) if "--samples" in argv else 7
    eph_samples = int(argv[argv.index("--ephemeral-samples") + 1]) if "--ephemeral-samples" in argv else 3
    words = [a for a in argv if a in ("reused", "ephemeral", "resume")] or ["reused", "ephemeral", "resume"]
    print(machine())
    print("seconds from spawning the process to the stage starting (median); ratio: longrun / baseline")
    print(header(), flush=True)
    with tempfile.TemporaryDirectory(prefix="longrun-bench-") as t:
        tmp = Path(t)
        if "reused" in words or "resume" in words:
            with PrefectServer(tmp / "server-home") as server:
                env = {**server.env}
                if "reused" in words:
                    first_stage(tmp / "reused", env, samples, "first stage, reused server")
                if "resume" in words:
                    resume(tmp / "resume", env, min(samples, 5))
        if "ephemeral" in words:
            env = {**BASE_ENV, "PREFECT_HOME": str(tmp / "ephemeral-home"), "LONGRUN_EPHEMERAL": "1"}
            first_stage(tmp / "ephemeral", env, eph_samples, "first stage, ephemeral")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
