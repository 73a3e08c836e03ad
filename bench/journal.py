"""Journal cost as a job grows: appends, and the full replay behind ``status``, ``tail -f`` and resume.

Two tables, each figure beside a baseline measured in the same run:

1. For journals of a growing number of iterations (11 events each, written
   through ``Journal.append``):

   * append: ``Journal.append`` (validated event, flock, one write, fsync) per
     second, against the floor of the same lines written with ``write`` + ``fsync``;
   * replay: ``Journal.state()`` (read, parse, validate, fold) in ms, against the
     floor of ``json.loads`` over the same lines.

2. Replay at 10k, 100k and 1M events (journals generated line by line from
   events built by ``build_event``, without fsync, so that 1M lines take
   seconds to write rather than minutes): ``Journal.state()`` in a fresh
   process, split into ``Journal.read()`` (JSON + validation into typed
   events) and ``replay()`` (the fold), with the process's peak RSS and
   its growth over the RSS after imports; against ``json.loads`` of every
   line (kept in a list, as ``read`` keeps its events), also in a fresh
   process with its own peak RSS. Median of ``--samples`` runs (default 3;
   1 at 1M events). Peak RSS is ``VmHWM`` from ``/proc/self/status``, not
   ``ru_maxrss``: Linux keeps ``ru_maxrss`` across ``exec``, so a child of
   a 70 MB parent starts at 70 MB and hides any growth below that (without
   /proc it falls back to ``ru_maxrss``). A replay still running after
   ``--timeout`` seconds (default 600) is stopped; its read time and the
   RSS after the read are still shown. Target (issue 10): 100k events
   under 1 s.

The ratios say what validation and the fold cost on top of the I/O and JSON
they cannot avoid. Run: ``python bench/journal.py [ITERATIONS ...] [--replay EVENTS ...] [--samples N] [--timeout S]``
(with no argument: iterations 10 100 1000, then replay at 10000 100000 1000000;
``--replay`` alone runs only table 2).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from longrun.journal.events import build_event
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


def write_journal(path: Path, events: int) -> int:
    """A valid journal of about ``events`` lines (whole iterations), written without fsync; returns its line count."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    head = [
        ("job_registered", {"job_id": JOB, "name": "bench", "spec_sha256": "0" * 64, "root": "/r"}),
        ("run_started", {"run_id": "r", "resumed": False}),
    ]
    # Templates: one iteration's events, built (and so validated) once; each line re-serialised with its seq, ts and iteration.
    template = [build_event(t, p, seq=1, job_id=JOB, ts=t0).to_dict() for t, p in iteration_events(1)]
    seq = 0
    with open(path, "wb") as fh:
        for type_, payload in head:
            seq += 1
            fh.write(build_event(type_, payload, seq=seq, job_id=JOB, ts=t0).to_line())
        for it in range(1, max(1, (events - len(head)) // len(template)) + 1):
            for tpl in template:
                seq += 1
                payload = {**tpl["payload"], "iteration": it}
                if "fingerprint" in payload:
                    payload["fingerprint"] = f"{it:040x}"
                if "dir" in payload:
                    payload["dir"] = f".maestro/checkpoints/{JOB}/{it}"
                ts = (t0 + timedelta(milliseconds=seq)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                line = {**tpl, "seq": seq, "ts": ts, "payload": payload}
                fh.write((json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
    return seq


_REPLAY = """
import json, resource, sys, time
from longrun.journal.local import Journal
from longrun.journal.fold import replay
def hwm():  # peak RSS of this process image in KB (VmHWM; ru_maxrss would carry the parent's peak across fork+exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rss0 = hwm()
t0 = time.perf_counter()
events = Journal(sys.argv[1]).read()
t1 = time.perf_counter()
print(json.dumps({"read_s": t1 - t0, "rss0_kb": rss0, "read_peak_kb": hwm()}), flush=True)
state = replay(events)
t2 = time.perf_counter()
print(json.dumps({"read_s": t1 - t0, "fold_s": t2 - t1, "s": t2 - t0, "rss0_kb": rss0,
                  "peak_kb": hwm(), "iterations": state.iterations_finished}))
"""

_LOADS = """
import json, resource, sys, time
def hwm():  # peak RSS of this process image in KB (VmHWM; ru_maxrss would carry the parent's peak across fork+exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rss0 = hwm()
t0 = time.perf_counter()
with open(sys.argv[1], "rb") as fh:
    rows = [json.loads(line) for line in fh.read().splitlines()]
s = time.perf_counter() - t0
print(json.dumps({"s": s, "rss0_kb": rss0, "peak_kb": hwm(), "n": len(rows)}))
"""


def _fresh(code: str, path: Path, timeout: float) -> dict:
    """Run ``code`` on ``path`` in a fresh interpreter; its last JSON line (a partial one if it timed out)."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=out)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.seek(0)
        rows = [json.loads(line) for line in out.read().splitlines()]
    if proc.returncode not in (0, -9):
        raise RuntimeError(f"replay process exited {proc.returncode}")
    return {**rows[-1], "timed_out": proc.returncode == -9}


def replay_table(sizes: list[int], samples: int, timeout: float) -> None:
    print(f"replay in a fresh process; n: runs (median of n; 1 at 1M events); a replay stopped after {timeout:.0f} s shows '>'")
    print(
        f"{'events':>8} {'MB':>5} {'n':>2} {'replay ms':>10} {'read ms':>8} {'fold ms':>8} {'json.loads ms':>13} {'time x':>6}"
        f" {'peak RSS MB':>11} {'+MB':>6} {'loads peak MB':>13} {'+MB':>6}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            path = Path(tmp) / f"events-{size}.jsonl"
            n_lines = write_journal(path, size)
            n = 1 if size >= 1_000_000 else samples
            rep, loads = [], []
            for _ in range(n):
                rep.append(_fresh(_REPLAY, path, timeout))
                loads.append(_fresh(_LOADS, path, timeout))
            m = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
            if any(r["timed_out"] for r in rep):  # only the read finished: the fold was stopped
                total = f">{timeout * 1000:.0f}"
                fold = f">{(timeout - m(rep, 'read_s')) * 1000:.0f}"
                ratio = f">{timeout / m(loads, 's'):.0f}"
                peak = m(rep, "read_peak_kb")
            else:
                total, fold = f"{m(rep, 's') * 1000:.0f}", f"{m(rep, 'fold_s') * 1000:.0f}"
                ratio, peak = f"{m(rep, 's') / m(loads, 's'):.1f}", m(rep, "peak_kb")
            print(
                f"{n_lines:>8} {path.stat().st_size / 2**20:>5.0f} {n:>2} {total:>10} {m(rep, 'read_s') * 1000:>8.0f}"
                f" {fold:>8} {m(loads, 's') * 1000:>13.0f} {ratio:>6}"
                f" {peak / 1024:>11.0f} {(peak - m(rep, 'rss0_kb')) / 1024:>6.0f}"
                f" {m(loads, 'peak_kb') / 1024:>13.0f} {(m(loads, 'peak_kb') - m(loads, 'rss0_kb')) / 1024:>6.0f}",
                flush=True,
            )
            path.unlink()
    print("peak RSS: the process's VmHWM; +MB: its growth over the RSS after imports (the journal's own memory)")


def main(argv: list[str]) -> None:
    samples = int(argv[argv.index("--samples") + 1]) if "--samples" in argv else 3
    timeout = float(argv[argv.index("--timeout") + 1]) if "--timeout" in argv else 600.0
    argv = [
        a
        for i, a in enumerate(argv)
        if a not in ("--samples", "--timeout") and (i == 0 or argv[i - 1] not in ("--samples", "--timeout"))
    ]
    if "--replay" in argv:
        k = argv.index("--replay")
        iterations, replay_sizes = [int(a) for a in argv[:k]], [int(a) for a in argv[k + 1 :]] or [10_000, 100_000, 1_000_000]
    else:
        iterations, replay_sizes = [int(a) for a in argv] or [10, 100, 1000], ([] if argv else [10_000, 100_000, 1_000_000])
    if iterations:
        appends_table(iterations)
    if replay_sizes:
        replay_table(replay_sizes, samples, timeout)


def appends_table(sizes: list[int]) -> None:
    print("appends through Journal.append, and Journal.state() in this process")
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
