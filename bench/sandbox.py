"""Per-command overhead of the bubblewrap sandbox against a raw subprocess, measured in the same run.

    python bench/sandbox.py [--samples N]

Three ways to run ``true``, N times each, interleaved so drift hits all three:

* ``raw``: ``subprocess.run(["true"])`` (the baseline);
* ``run_command``: longrun's ``run_command`` without a sandbox (log file, new
  session, process-group supervision);
* ``run_command + bwrap``: the same inside the sandbox a stage gets
  (``.maestro`` hidden, workspace and usage dir writable, PID/IPC namespaces,
  capabilities dropped).

Prints the median and p90 of each in milliseconds, and the sandbox's extra cost
over ``run_command`` alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from longrun.execution.process import run_command
from longrun.execution.sandbox import SandboxPlan, check_bwrap


def _ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.9) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    bwrap = check_bwrap()
    with tempfile.TemporaryDirectory(prefix="longrun-bench-sandbox-") as tmp:
        root = Path(tmp)
        ws, usage = root / "ws", root / ".maestro" / "checkpoints" / "1" / "usage"
        ws.mkdir()
        usage.mkdir(parents=True)
        plan = SandboxPlan(writable=(ws, usage), hidden=(root / ".maestro",), read_only=(usage.parent,), bwrap=bwrap)
        env = {"PATH": os.environ.get("PATH", os.defpath)}
        log = root / "command.log"
        times: dict[str, list[float]] = {"raw": [], "run_command": [], "run_command + bwrap": []}
        for _ in range(args.samples):
            t = time.perf_counter()
            subprocess.run(["true"], env=env, check=True)
            times["raw"].append(time.perf_counter() - t)
            t = time.perf_counter()
            run_command(["true"], cwd=ws, env=env, timeout=30, log_path=log)
            times["run_command"].append(time.perf_counter() - t)
            t = time.perf_counter()
            res = run_command(["true"], cwd=ws, env=env, timeout=30, log_path=log, sandbox=plan)
            times["run_command + bwrap"].append(time.perf_counter() - t)
            if res.exit_code != 0:
                raise SystemExit(f"sandboxed true failed: {res}")
    print(f"{args.samples} samples each, {os.cpu_count()} CPUs, bwrap {bwrap}")
    print(f"{'':22} {'median ms':>10} {'p90 ms':>8} {'x raw':>7}")
    raw_median = _ms(times["raw"])[0]
    for name, samples in times.items():
        median, p90 = _ms(samples)
        print(f"{name:22} {median:10.2f} {p90:8.2f} {median / raw_median:7.2f}")
    extra = _ms(times["run_command + bwrap"])[0] - _ms(times["run_command"])[0]
    print(f"sandbox overhead per command (median): {extra:.2f} ms")


if __name__ == "__main__":
    main()
