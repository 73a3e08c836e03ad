"""Every command against a job root on S3, from machines that share only the store.

A "machine" is a working directory plus its own ``LONGRUN_WORKDIR`` (where it
keeps its mirror of the root): nothing on disk is shared between them. The
store is moto's S3 server over HTTP; the flows run on the session's Prefect server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import EXAMPLES, longrun_cli, stop_group, write_job
from s3_faults import KEY, REGION, SECRET, s3_client, s3_env

pytestmark = pytest.mark.prefect

PY = sys.executable


@pytest.fixture
def s3_root(moto_server, cli_env, tmp_path):
    """``(url, env_for(machine))``: a fresh bucket, and the environment of a CLI on machine ``name``."""
    bucket = f"lr-{uuid.uuid4().hex[:12]}"
    aws = {k: v for k, v in s3_env(moto_server).items() if k.startswith("AWS_")}
    s3_client(moto_server).create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/jobs-root"

    def env_for(name: str) -> tuple[Path, dict]:
        home = tmp_path / name
        (home / "cwd").mkdir(parents=True, exist_ok=True)
        return home / "cwd", {**cli_env, **aws, "LONGRUN_WORKDIR": str(home / "roots"), "LONGRUN_ROOT": url}

    return url, env_for


def cli(cwd: Path, env: dict, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = longrun_cli(*args, cwd=cwd, env=env, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_a_job_run_on_one_machine_is_seen_verified_and_pruned_from_another(s3_root, tmp_path):
    url, env_for = s3_root
    a_cwd, a_env = env_for("a")
    spec = a_cwd / "examples"
    import shutil

    shutil.copytree(EXAMPLES, spec)
    run = cli(a_cwd, a_env, "run", str(spec / "fix-failing-test.yaml"), "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    job = out["job_id"]
    assert out["status"] == "COMPLETED" and out["iterations"] == 2

    b_cwd, b_env = env_for("b")
    listed = cli(b_cwd, b_env, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(j["job_id"], j["status"]) for j in json.loads(listed.stdout)["jobs"]] == [(job, "COMPLETED")]
    status = json.loads(cli(b_cwd, b_env, "status", "fix-failing-test", "--json").stdout)
    assert (status["status"], status["iteration"], round(status["usd"], 2)) == ("COMPLETED", 2, 0.12)
    tail = cli(b_cwd, b_env, "tail", job, "-n", "2")
    assert "evidence_built" in tail.stdout and "evidence_uploaded" in tail.stdout
    uploaded = [
        e
        for e in map(json.loads, cli(b_cwd, b_env, "tail", job, "--json").stdout.splitlines())
        if e["type"] == "evidence_uploaded"
    ]
    assert uploaded and uploaded[0]["payload"]["uri"] == f"{url}/evidence/{job}/{job}.tar.gz"
    # b has no bundle and no checkpoints on disk: verify fetches them and checks both.
    verify = cli(b_cwd, b_env, "verify", job)
    assert verify.returncode == 0 and "OK" in verify.stdout, verify.stdout + verify.stderr
    assert "on disk" in verify.stdout

    # b rebuilds the bundle from the checkpoints in the store (the same files A packed) and uploads it there.
    built = [
        e for e in map(json.loads, cli(b_cwd, b_env, "tail", job, "--json").stdout.splitlines()) if e["type"] == "evidence_built"
    ]
    rebuilt = cli(b_cwd, b_env, "evidence", job, "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    doc = json.loads(rebuilt.stdout)
    assert (doc["status"], doc["uploaded"]["uri"]) == ("uploaded", f"{url}/evidence/{job}/{job}.tar.gz")
    assert doc["bundle"]["files"] == built[0]["payload"]["files"]
    # tail --follow on a finished run prints to the end and returns.
    follow = cli(b_cwd, b_env, "tail", job, "--follow", "-n", "1", timeout=60)
    assert follow.returncode == 0 and "evidence_uploaded" in follow.stdout, follow.stdout + follow.stderr

    # Prune from b removes the checkpoints in the store; c still verifies the run against its bundle.
    prune = cli(b_cwd, b_env, "prune", job, "--older-than", "0", "--keep-last", "0", "--json")
    assert prune.returncode == 0, prune.stderr
    assert json.loads(prune.stdout)["jobs"][0]["iterations"] == [1, 2]
    client = s3_client(a_env["AWS_ENDPOINT_URL"])
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    left = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/checkpoints/{job}/").get("KeyCount")
    assert left == 0
    c_cwd, c_env = env_for("c")
    verify_c = cli(c_cwd, c_env, "verify", job)
    assert verify_c.returncode == 0 and "pruned iterations" in verify_c.stdout, verify_c.stdout + verify_c.stderr
    # The pruned event reached a's mirror through the store.
    a_tail = cli(a_cwd, a_env, "tail", job, "-n", "1")
    assert "pruned" in a_tail.stdout


def test_stop_from_another_machine_reaches_the_running_job(s3_root, tmp_path):
    url, env_for = s3_root
    a_cwd, a_env = env_for("a")
    spec = write_job(
        a_cwd,
        f"""
name: long-one
goal: run until stopped
workspace: {{path: ws, template: template}}
allowed_tools: [{PY}]
model_policy: {{default: m}}
sandbox: none
stop_conditions: {{max_iterations: 60}}
stages:
  - {{id: tick, run: [{PY}, -c, "import time; open('ticks','a').write('x'); time.sleep(0.5)"]}}
""",
    )
    engine = subprocess.Popen(
        [PY, "-m", "longrun.cli.main", "run", str(spec), "--json"],
        cwd=a_cwd,
        env=a_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        b_cwd, b_env = env_for("b")
        deadline = time.monotonic() + 120
        while True:
            st = cli(b_cwd, b_env, "status", "long-one", "--json")
            if st.returncode == 0 and json.loads(st.stdout)["iterations_finished"] >= 2:
                break
            assert engine.poll() is None and time.monotonic() < deadline, (
                engine.communicate()[1][-3000:] if engine.poll() is not None else "no progress"
            )
            time.sleep(0.5)
        stop = cli(b_cwd, b_env, "stop", "long-one", "--by", "bob")
        assert stop.returncode == 0, stop.stderr
        stdout, stderr = engine.communicate(timeout=120)
    finally:
        stop_group(engine)
    assert engine.returncode == 3, stderr[-3000:]  # STOPPED
    final = json.loads(stdout)
    assert (final["status"], final["reason"]) == ("STOPPED", "stop_file")
    assert final["iterations"] < 60
    events = [json.loads(line) for line in cli(b_cwd, b_env, "tail", "long-one", "--json").stdout.splitlines()]
    assert any(e["type"] == "stop_requested" and e["payload"]["by"] == "bob" for e in events)


def test_a_bad_or_unreachable_root_exits_with_its_code(s3_root, tmp_path):
    url, env_for = s3_root
    cwd, env = env_for("a")
    bad = cli(cwd, {**env, "LONGRUN_ROOT": "s3://bucket/../x"}, "list")
    assert bad.returncode == 2 and bad.stderr.startswith("root_invalid"), bad.stderr
    gone = cli(cwd, env, "status", "x", "--root", f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/p", timeout=300)
    assert gone.returncode == 1 and gone.stderr.startswith("root_unreachable"), gone.stderr


def test_a_saved_s3_block_is_a_job_root_with_its_own_credentials(s3_root, moto_server, prefect_server, tmp_path):
    """``--root longrun-s3-evidence-store/<name>``: bucket, prefix, endpoint and keys come from the block."""
    from longrun.blocks.evidence import S3EvidenceStore

    url, env_for = s3_root
    bucket = url.removeprefix("s3://").split("/", 1)[0]
    name = f"root-{uuid.uuid4().hex[:8]}"
    S3EvidenceStore(
        bucket=bucket,
        prefix="via-block",
        endpoint_url=moto_server,
        region_name=REGION,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        addressing_style="path",
    ).save(name)
    ref = f"longrun-s3-evidence-store/{name}"
    a_cwd, a_env = env_for("a")
    # No AWS variables at all: the block is the only way to the store.
    a_env = {k: v for k, v in a_env.items() if not k.startswith("AWS_")} | {"LONGRUN_ROOT": ref}
    spec = write_job(
        a_cwd,
        f"""
name: via-block
goal: one iteration
workspace: {{path: ws, template: template}}
allowed_tools: [{PY}]
model_policy: {{default: m}}
sandbox: none
stop_conditions: {{max_iterations: 1}}
stages:
  - {{id: s, run: [{PY}, -c, "open('x', 'w').write('x')"]}}
""",
    )
    run = cli(a_cwd, a_env, "run", str(spec), "--json")
    assert run.returncode in (0, 3), run.stderr  # one iteration, no gate: stopped by max_iterations
    job = json.loads(run.stdout)["job_id"]
    client = s3_client(moto_server)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="via-block/").get("Contents", [])]
    assert f"via-block/jobs/{job}/events/000000000001.json" in keys
    assert f"via-block/evidence/{job}/{job}.tar.gz" in keys  # the bundle went with the block's credentials too
    b_cwd, b_env = env_for("b")
    b_env = {k: v for k, v in b_env.items() if not k.startswith("AWS_")}
    status = cli(b_cwd, b_env, "status", "via-block", "--root", ref, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["job_id"] == job, status.stderr
