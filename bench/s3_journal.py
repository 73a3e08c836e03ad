"""The journal on an S3 job root: append latency and replay throughput, against raw S3 calls in the same run.

    python bench/s3_journal.py [--appends N] [--events N ...]

Starts ``moto_server`` on 127.0.0.1 (a free port) and measures, against the same server:

* **append**: ``Journal.append`` on a mirror of ``s3://…`` (list after the
  mirror's last seq, conditional ``put_object`` with ``If-None-Match: *`` of the
  next seq, local ``write`` + ``fsync``), N appends of a ``stop_requested``
  event; baseline: one raw boto3 ``put_object`` of a journal-sized line per
  append (the floor: one request, no condition, no listing);
* **replay**: a fresh machine's ``Journal.read()`` of a journal of E events
  (list, then the segments of 256 events and the events after them, fetched
  with 8 threads; parse; write the mirror); baseline: raw boto3
  ``list_objects_v2`` of the same event objects plus one ``get_object`` per
  key in one thread (what a reader without segments does), and a listing alone.

Medians of the per-append times; replays are timed once per size, each in turn.
The machine is shared and noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from _common import MotoServer, machine

KEY, SECRET, REGION = "testing", "testing", "us-east-1"
JOB = "0123456789ab"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=200)
    parser.add_argument("--events", type=int, nargs="*", default=[300, 1500])
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="longrun-bench-s3j-") as tmp, MotoServer(Path(tmp)) as endpoint:
        os.environ.update(
            AWS_ACCESS_KEY_ID=KEY,
            AWS_SECRET_ACCESS_KEY=SECRET,
            AWS_DEFAULT_REGION=REGION,
            AWS_ENDPOINT_URL=endpoint,
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        )
        import boto3
        from botocore.config import Config

        from longrun.journal.local import Journal
        from longrun.storage import mirror
        from longrun.storage.paths import JobPaths

        raw = boto3.client("s3", config=Config(retries={"total_max_attempts": 1}))
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        raw.create_bucket(Bucket=bucket)

        def root_for(name: str, url: str) -> Path:
            os.environ["LONGRUN_WORKDIR"] = str(Path(tmp) / name)
            return mirror.open_root(url)

        # -- append ---------------------------------------------------------------
        url = f"s3://{bucket}/append"
        journal = Journal(JobPaths(root_for("writer", url), JOB).events_file)
        line = journal.append("stop_requested", {"by": "warm-up", "reason": "bench"}, job_id=JOB).to_line()
        ours, floor = [], []
        for n in range(args.appends):
            t = time.perf_counter()
            journal.append("stop_requested", {"by": f"bench-{n}", "reason": "bench"}, job_id=JOB)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            raw.put_object(Bucket=bucket, Key=f"raw/append/{n:012d}.json", Body=line)
            floor.append(time.perf_counter() - t)
        a, b = statistics.median(ours) * 1000, statistics.median(floor) * 1000
        print(f"\nappend ({args.appends} appends, median)")
        print(f"  Journal.append on s3://      {a:8.2f} ms   ({1000 / a:6.0f}/s)")
        print(f"  raw put_object (baseline)    {b:8.2f} ms   ({1000 / b:6.0f}/s)")
        print(f"  ratio                        {a / b:8.2f} x")

        # -- replay ---------------------------------------------------------------
        print("\nreplay on a fresh machine (one run per size)")
        print(f"  {'events':>7}  {'Journal.read':>14}  {'raw list+get':>14}  {'raw list only':>14}  {'ratio':>7}")
        for size in args.events:
            url = f"s3://{bucket}/replay-{size}"
            writer = Journal(JobPaths(root_for(f"w{size}", url), JOB).events_file)
            for n in range(size):
                writer.append("stop_requested", {"by": f"e{n}", "reason": "bench"}, job_id=JOB)
            fresh = Journal(JobPaths(root_for(f"r{size}", url), JOB).events_file)
            t = time.perf_counter()
            events = fresh.read()
            ours_s = time.perf_counter() - t
            assert len(events) == size
            prefix = f"replay-{size}/jobs/{JOB}/events/"
            t = time.perf_counter()
            keys = [
                o["Key"]
                for page in raw.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                for o in page.get("Contents", [])
            ]
            list_s = time.perf_counter() - t
            for k in keys:
                raw.get_object(Bucket=bucket, Key=k)["Body"].read()
            raw_s = time.perf_counter() - t
            assert len(keys) == size
            print(
                f"  {size:>7}  {ours_s:10.2f} s ({size / ours_s:5.0f}/s)  {raw_s:6.2f} s ({size / raw_s:5.0f}/s)  "
                f"{list_s:10.2f} s  {ours_s / raw_s:6.2f}x"
            )


if __name__ == "__main__":
    main()
