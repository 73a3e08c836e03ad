"""S3 upload of an evidence bundle through longrun's ``S3Store``, against independent clients, to the same moto server.

Starts ``moto_server`` on 127.0.0.1 (a free port) and uploads the same file
(random bytes, so nothing compresses; default sizes 10 MB and 100 MB):

* longrun: ``S3Store.put`` (``upload_file`` through s3transfer: multipart
  above 8 MB in 8 MB parts, 4 threads; sha256 metadata; then ``head_object``
  to check size and sha256), with the sha256 computed beforehand as
  ``longrun evidence push`` does (the hashing is timed as part of it);
* baseline 1: plain boto3 ``put_object`` of the whole file in one request
  (a fresh default client);
* baseline 2: ``s3cmd put`` (a separate program, its start-up included;
  multipart above 15 MB by its defaults).

Each figure is the median of N uploads (default 5), run in turn so that load
changes hit all three alike; the client is created once per method (its
start-up is not timed, except s3cmd's process).

Run: ``python bench/s3.py [--samples N] [MB ...]``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import MotoServer, machine, med

KEY, SECRET, REGION = "testing", "testing", "us-east-1"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def s3cmd_config(tmp: Path, endpoint: str) -> Path:
    host = endpoint.removeprefix("http://")
    cfg = tmp / "s3cfg"
    cfg.write_text(
        "[default]\n"
        f"access_key = {KEY}\nsecret_key = {SECRET}\n"
        f"host_base = {host}\nhost_bucket = {host}\n"
        "use_https = False\nsignature_v2 = False\nbucket_location = us-east-1\n"
    )
    return cfg


def main(argv: list[str]) -> int:
    samples = int(argv[argv.index("--samples") + 1]) if "--samples" in argv else 5
    sizes = [int(a) for i, a in enumerate(argv) if a.isdigit() and (i == 0 or argv[i - 1] != "--samples")] or [10, 100]
    os.environ.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION=REGION)
    s3cmd = shutil.which("s3cmd") or str(Path(sys.executable).parent / "s3cmd")

    import boto3

    from longrun.storage.s3 import S3Store

    print(machine())
    print(f"upload to moto on 127.0.0.1, median of {samples}; ratio: longrun's time over the baseline's")
    print(
        f"{'MB':>5} {'S3Store.put s':>13} {'put_object s':>12} {'ratio':>6} {'s3cmd put s':>11} {'ratio':>6}  MB/s (longrun / put_object / s3cmd)"
    )
    with tempfile.TemporaryDirectory(prefix="longrun-bench-") as t:
        tmp = Path(t)
        with MotoServer(tmp) as endpoint:
            plain = boto3.client(
                "s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name=REGION
            )
            plain.create_bucket(Bucket="bench")
            store = S3Store(
                "bench", "longrun", endpoint_url=endpoint, region_name=REGION, access_key_id=KEY, secret_access_key=SECRET
            )
            cfg = s3cmd_config(tmp, endpoint)
            for mb in sizes:
                path = tmp / f"bundle-{mb}.tar.gz"
                with open(path, "wb") as fh:
                    for _ in range(mb):
                        fh.write(os.urandom(1 << 20))
                lr, put, cmd, hashing = [], [], [], []
                for i in range(samples):
                    t0 = time.perf_counter()
                    digest = sha256(path)
                    hashing.append(time.perf_counter() - t0)
                    store.put(path, f"job{i}/bundle.tar.gz", sha256=digest)
                    lr.append(time.perf_counter() - t0)

                    t0 = time.perf_counter()
                    with open(path, "rb") as fh:
                        plain.put_object(Bucket="bench", Key=f"plain/{i}/bundle.tar.gz", Body=fh)
                    put.append(time.perf_counter() - t0)

                    t0 = time.perf_counter()
                    subprocess.run(
                        [s3cmd, "-c", str(cfg), "--no-progress", "put", str(path), f"s3://bench/s3cmd/{i}/bundle.tar.gz"],
                        check=True,
                        capture_output=True,
                    )
                    cmd.append(time.perf_counter() - t0)
                a, b, c = med(lr), med(put), med(cmd)
                print(
                    f"{mb:>5} {a:>13.2f} {b:>12.2f} {a / b:>6.2f} {c:>11.2f} {a / c:>6.2f}  "
                    f"{mb / a:.0f} / {mb / b:.0f} / {mb / c:.0f}; longrun's sha256 of the file: {med(hashing):.2f} s",
                    flush=True,
                )
                path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
