"""The bare-Prefect baselines, run as a separate process (so its start-up counts like ``longrun run``'s).

* ``python bench/_bare.py first STAMP``: a flow whose first (and only) task
  runs ``sh -c 'date +%s.%N > STAMP'``, the same command as longrun's stage;
* ``python bench/_bare.py stages N``: a flow of N tasks, each running
  ``subprocess.run(["true"])``; prints one JSON list of the wall-clock time at
  which each task body started.

Plain ``@flow`` / ``@task`` with Prefect's defaults; the server is whatever
``PREFECT_API_URL`` names, or the ephemeral one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from prefect import flow, task


@task
def stamp(path: str) -> None:
    subprocess.run(["sh", "-c", f"date +%s.%N > {path}"], check=True)


@flow
def bare_first(path: str) -> None:
    stamp(path)


@task
def true_task(i: int) -> float:
    t = time.time()
    subprocess.run(["true"], check=True)
    return t


@flow
def bare_stages(n: int) -> list[float]:
    return [true_task(i) for i in range(n)]


if __name__ == "__main__":
    if sys.argv[1] == "first":
        bare_first(sys.argv[2])
    else:
        print(json.dumps(bare_stages(int(sys.argv[2]))))
