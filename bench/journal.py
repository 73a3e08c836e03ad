"""Journal cost as a job grows: appends, and the full replay behind ``status``, ``tail -f`` and resume.

Prints, for journals of a growing number of iterations (11 events each):

* append: ``Journal.append`` (validated event, flock, one write, fsync) per
  second, against the floor of the same lines written with ``write`` + ``fsync``;
* replay: ``Journal.state()`` (read, parse, validate, fold) in ms, against the
  floor of ``json.loads`` over the same lines.

The ratios say what validation and the fold cost on top of the I/O and JSON
they cannot avoid. Run: ``python bench/journal.py [ITERATIONS ...]``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from longrun.journal.local import Journal

JOB = "0123456789ab"


def iteration_events(it: int) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = [("iteration_started", {"iteration": it, "start_tree": "f" * 40})]
    for stage in ("plan", "execute", "verify"):
        out.append(("stage_started", {"iteration": it, "stage": stage, "attempt": 1, "phase": stage, "model": "m"}))
        out.append(
            (
                "stage_finished",
                {
                    "iteration": it,
                    "stage": stage,
                    "exit_code": 0,
                    "duration_s": 1.5,
                    "phase": stage,
                    "model": "m",
                    "usage": {"usd": 0.01, "tokens": 1200},
                },
            )
        )
    for gate in ("tests", "scope"):
        out.append(
            (
                "gate_evaluated",
                {
                    "iteration": it,
                    "gate": gate,
                    "kind": "command_pass",
                    "required": True,
                    "passed": False,
                    "evidence": {"exit_code": 1},
                },
            )
        )
    out.append(
        (
            "checkpoint_written",
            {
                "iteration": it,
                "dir": f".maestro/checkpoints/{JOB}/{it}",
                "files": {"summary.md": "a" * 64, "patch.diff": "b" * 64},
            },
        )
    )
    out.append(("iteration_finished", {"iteration": it, "gates_passed": False, "fingerprint": f"{it:040x}"}))
    return out


def measure(iterations: int, base: Path) -> dict[str, float]:
    path = base / f"events-{iterations}.jsonl"
    journal = Journal(path)
    journal.append("job_registered", {"job_id": JOB, "name": "bench", "spec_sha256": "0" * 64, "root": str(base)}, job_id=JOB)
    journal.append("run_started", {"run_id": "r", "resumed": False}, job_id=JOB)
    t0 = time.perf_counter()
    for it in range(1, iterations + 1):
        for type_, payload in iteration_events(it):
            journal.append(type_, payload, job_id=JOB)
    append_s = time.perf_counter() - t0
    lines = path.read_bytes().splitlines(keepends=True)
    n = len(lines) - 2

    # Floor for appends: the same bytes, one write + fsync per line.
    raw = base / f"raw-{iterations}.jsonl"
    fd = os.open(raw, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    t0 = time.perf_counter()
    for line in lines[2:]:
        os.write(fd, line)
        os.fsync(fd)
    raw_s = time.perf_counter() - t0
    os.close(fd)

    t0 = time.perf_counter()
    state = journal.state()
    replay_s = time.perf_counter() - t0
    assert state.iterations_finished == iterations, state.iterations_finished
    t0 = time.perf_counter()
    [json.loads(line) for line in path.read_bytes().splitlines()]
    loads_s = time.perf_counter() - t0
    return {
        "events": n,
        "append_per_s": n / append_s,
        "raw_per_s": n / raw_s,
        "replay_ms": replay_s * 1000,
        "loads_ms": loads_s * 1000,
    }


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [10, 100, 1000]
    print(
        f"{'iterations':>10} {'events':>7} {'append/s':>9} {'raw fsync/s':>11} {'time x':>6} {'replay ms':>10} {'json.loads ms':>13} {'time x':>6}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            r = measure(size, Path(tmp))
            print(
                f"{size:>10} {r['events']:>7} {r['append_per_s']:>9.0f} {r['raw_per_s']:>11.0f} "
                f"{r['raw_per_s'] / r['append_per_s']:>6.1f} {r['replay_ms']:>10.1f} {r['loads_ms']:>13.1f} "
                f"{r['replay_ms'] / max(r['loads_ms'], 1e-6):>6.1f}"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
