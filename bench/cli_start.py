"""Wall time of the read-only commands, against ``python -c pass`` measured in the same run.

``validate`` of a spec, ``status`` and ``list`` of a root holding one job of
20 iterations (222 journal events), and ``python -c "import longrun.cli.main"``
(the import alone), each a fresh ``python -m longrun.cli ...`` process; the
baseline is the interpreter's own start, ``python -c pass``. Commands
alternate; one warm-up round (which also writes bytecode) is not counted.
``PYTHONDONTWRITEBYTECODE`` is removed from the environment so that cached
bytecode is used, as after a normal install.

Targets (issue 10): ``validate`` under 0.5 s; ``status`` and ``list`` within
0.3 s of ``python -c pass``.

Run: ``python bench/cli_start.py [--samples N]`` (default 9).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import PY, machine, med
from journal import JOB, iteration_events

SPEC = """
name: bench
goal: measure the read-only commands
allowed_tools: [sh]
model_policy: {default: m}
stages:
  - {id: plan, run: [sh, -c, "true"]}
  - {id: execute, run: [sh, -c, "true"]}
  - {id: verify, run: [sh, -c, "true"]}
quality_gates:
  required:
    - {id: tests, kind: command_pass, run: [sh, -c, "false"]}
stop_conditions: {max_iterations: 50}
"""


def make_root(root: Path) -> tuple[Path, str]:
    from longrun.journal.local import Journal
    from longrun.journal.registry import register
    from longrun.spec.loader import load_spec

    spec = root / "job.yaml"
    spec.write_text(SPEC)
    loaded = load_spec(spec)
    record = register(loaded, root)
    journal = Journal(record.paths.events_file)
    journal.append("run_started", {"run_id": "r", "resumed": False}, job_id=loaded.job_id)
    for it in range(1, 21):
        for type_, payload in iteration_events(it):
            payload = {**payload}
            if type_ == "checkpoint_written":
                payload["dir"] = payload["dir"].replace(JOB, loaded.job_id)
            journal.append(type_, payload, job_id=loaded.job_id)
    return spec, loaded.job_id


def timed(argv: list[str], env: dict, cwd: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{argv} exited {r.returncode}:\n{r.stdout}\n{r.stderr[-2000:]}")
    return dt


def main(argv: list[str]) -> int:
    samples = int(argv[argv.index("--samples") + 1]) if "--samples" in argv else 9
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PREFECT_API_URL")}
    with tempfile.TemporaryDirectory(prefix="longrun-bench-") as t:
        root = Path(t)
        spec, job_id = make_root(root)
        commands = {
            "python -c pass": [PY, "-c", "pass"],
            "import longrun.cli.main": [PY, "-c", "import longrun.cli.main"],
            "validate": [PY, "-m", "longrun.cli", "validate", str(spec)],
            "status": [PY, "-m", "longrun.cli", "status", job_id, "--root", str(root)],
            "list": [PY, "-m", "longrun.cli", "list", "--root", str(root)],
        }
        times: dict[str, list[float]] = {k: [] for k in commands}
        for rnd in range(samples + 1):
            for name, cmd in commands.items():
                dt = timed(cmd, env, root)
                if rnd:
                    times[name].append(dt)
    base = med(times["python -c pass"])
    print(machine())
    print(f"wall time per command, median of {samples} fresh processes; baseline python -c pass = {base * 1000:.0f} ms")
    print(f"{'command':<26}{'median ms':>10}{'- pass ms':>10}{'x pass':>8}  target")
    targets = {
        "validate": lambda m: f"< 500 ms: {'met' if m < 0.5 else 'MISSED'}",
        "status": lambda m: f"within 300 ms of pass: {'met' if m - base < 0.3 else 'MISSED'}",
        "list": lambda m: f"within 300 ms of pass: {'met' if m - base < 0.3 else 'MISSED'}",
    }
    for name, xs in times.items():
        m = med(xs)
        target = targets[name](m) if name in targets else ""
        print(f"{name:<26}{m * 1000:>10.0f}{(m - base) * 1000:>10.0f}{m / base:>8.2f}  {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
