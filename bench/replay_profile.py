"""Where a journal replay spends its time, and what two candidate changes would save (measured, not applied).

Builds a journal of EVENTS events (as ``bench/journal.py``: 11 per
iteration, both gates failing every iteration) and prints, each in this
process, beside ``json.loads`` of the same lines:

* ``Journal.read()`` (json.loads + pydantic validation per line) and, as a
  what-if, ``EventAdapter.validate_json`` per line (pydantic parses the JSON
  itself; no ``json.loads``, no intermediate dict);
* ``replay()`` (the fold) as it is and, as a what-if, with
  ``gate_evaluated`` keeping each gate's failed iterations in a list thawed
  once per fold (O(1) per event) instead of rebuilding and sorting the
  whole tuple on every event (O(iterations) per event: quadratic); and that
  again with the cyclic garbage collector disabled during the fold;
* the part of the fold spent in ``_freeze(payload.model_dump(mode="json"))``
  for ``stage_finished`` and ``gate_evaluated``;
* with ``--profile``, the top functions of ``cProfile`` over
  ``Journal.state()``.

The what-ifs are patched into this process only; nothing under ``longrun/``
changes. Run: ``python bench/replay_profile.py [EVENTS] [--profile]`` (default 100000).
"""

from __future__ import annotations

import bisect
import cProfile
import gc
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from journal import write_journal

from longrun.journal import state as st
from longrun.journal.events import EventAdapter
from longrun.journal.local import Journal


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _gate_evaluated_linear(self: Any, p: Any, ts: Any) -> None:
    """What-if: the same result, O(1) per event when gates arrive in iteration order."""
    self._inner("gate_results", p.iteration)[p.gate] = st._freeze(p.model_dump(mode="json"))
    lists = self.__dict__.setdefault("_failed_lists", {})
    failed = self._map("gate_failed_iterations")
    its = lists.get(p.gate)
    if its is None:
        its = lists[p.gate] = list(failed.get(p.gate, ()))
    if its and its[-1] == p.iteration:
        its.pop()  # a re-evaluation of the newest iteration: the last one counts
    elif its and its[-1] > p.iteration and p.iteration in its:  # an older iteration: rare, O(n)
        its.remove(p.iteration)
    if not p.passed:
        bisect.insort(its, p.iteration)  # an append when iterations arrive in order
    failed[p.gate] = its  # a list inside the fold; freeze() would turn it into a tuple


def main(argv: list[str]) -> int:
    size = next((int(a) for a in argv if a.isdigit()), 100_000)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        n = write_journal(path, size)
        lines = path.read_bytes().splitlines()
        loads_s, _ = timed(lambda: [json.loads(line) for line in lines])
        read_s, events = timed(lambda: Journal(path).read())
        vjson_s, fast = timed(lambda: [EventAdapter.validate_json(line) for line in lines])
        assert fast == events
        fold_s, state = timed(lambda: st.replay(events))
        original = st._HANDLERS["gate_evaluated"]
        st._HANDLERS["gate_evaluated"] = _gate_evaluated_linear
        try:
            lin_s, lin = timed(lambda: st.replay(events))
            gc.disable()  # what-if: no cyclic GC passes over the millions of live objects during the fold
            try:
                nogc_s, _ = timed(lambda: st.replay(events))
            finally:
                gc.enable()
        finally:
            st._HANDLERS["gate_evaluated"] = original
        assert {g: tuple(v) for g, v in lin.gate_failed_iterations.items()} == dict(state.gate_failed_iterations)
        heavy = [e for e in events if e.type in ("stage_finished", "gate_evaluated")]
        freeze_s, _ = timed(lambda: [st._freeze(e.payload.model_dump(mode="json")) for e in heavy])

        print(f"{n} events ({path.stat().st_size / 2**20:.0f} MB), one run each, in this process")
        print(f"{'step':<52}{'ms':>9}{'x json.loads':>13}")
        for label, s in [
            ("json.loads of every line (baseline)", loads_s),
            ("Journal.read(): json.loads + validate_python", read_s),
            ("  what-if: EventAdapter.validate_json per line", vjson_s),
            ("replay(): the fold, as it is", fold_s),
            ("  what-if: gate_evaluated O(1) (list, thawed once)", lin_s),
            ("  what-if: that, and gc disabled during the fold", nogc_s),
            (f"  of which _freeze(model_dump()) x{len(heavy)}", freeze_s),
            ("Journal.state() now: read + fold", read_s + fold_s),
            ("  with gate_evaluated O(1) and gc off in the fold", read_s + nogc_s),
        ]:
            print(f"{label:<52}{s * 1000:>9.0f}{s / loads_s:>13.1f}")
        if "--profile" in argv:
            prof = cProfile.Profile()
            prof.runcall(Journal(path).state)
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
            print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:4000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
