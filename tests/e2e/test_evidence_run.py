"""Evidence at the end of a real run: upload to S3 (moto server), a dead endpoint, push later, verify."""

from __future__ import annotations

import hashlib
import json

import boto3
import pytest
from conftest import free_port, longrun_cli, write_job

from longrun.journal.local import Journal
from longrun.spec import load_spec
from longrun.storage.paths import JobPaths

pytestmark = pytest.mark.prefect
KEY = SECRET = "testing"

SPEC = """
name: evidenced
goal: leave evidence in S3
workspace: {{path: ws, template: template}}
allowed_tools: [python]
model_policy: {{default: m}}
evidence: {{store: "s3://{bucket}/runs"}}
stages:
  - {{id: work, run: [python, -c, "open('out.txt', 'w').write('done')"]}}
quality_gates:
  required:
    - {{id: made, kind: artifact_exists, path: out.txt}}
"""


def aws_env(cli_env: dict, endpoint: str) -> dict:
    return {
        **cli_env,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_run_uploads_bundle_and_it_verifies_from_s3(cli_env, moto_server, tmp_path):
    client = boto3.client(
        "s3", endpoint_url=moto_server, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name="us-east-1"
    )
    client.create_bucket(Bucket="runs-ok")
    spec = write_job(tmp_path, SPEC.format(bucket="runs-ok"))
    job_id = load_spec(spec).job_id
    env = aws_env(cli_env, moto_server)
    r = longrun_cli("run", str(spec), "--json", "--root", str(tmp_path), cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    state = Journal(JobPaths(tmp_path, job_id).events_file).state()
    uploaded = state.evidence["uploaded"]
    assert uploaded["uri"].startswith("s3://runs-ok/runs/")
    manifest_local = JobPaths(tmp_path, job_id).evidence_dir / f"{job_id}.manifest.json"
    manifest = json.loads(manifest_local.read_text())
    assert manifest["_type"] == "https://in-toto.io/Statement/v1"
    assert manifest["predicate"]["status"] == "COMPLETED"
    # The object in S3 is the bundle the manifest describes.
    bucket, key = uploaded["uri"].removeprefix("s3://").split("/", 1)
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == manifest["predicate"]["bundle"]["sha256"]
    remote_manifest = uploaded["manifest_uri"]
    v = longrun_cli("verify", remote_manifest, "--json", cwd=tmp_path, env=env)
    assert v.returncode == 0 and json.loads(v.stdout)["ok"] is True, v.stdout + v.stderr


def test_dead_endpoint_keeps_the_bundle_exit_7_and_push_later(cli_env, moto_server, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    spec = write_job(tmp_path, SPEC.format(bucket="runs-later"))
    job_id = load_spec(spec).job_id
    r = longrun_cli("run", str(spec), "--json", "--root", str(tmp_path), cwd=tmp_path, env=aws_env(cli_env, dead))
    assert r.returncode == 7, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "COMPLETED" and out["evidence_upload_failed"]["retryable"] is True
    paths = JobPaths(tmp_path, job_id)
    assert (paths.evidence_dir / f"{job_id}.tar.gz").is_file()
    types = [e.type for e in Journal(paths.events_file).read()]
    assert types[-3:] == ["run_completed", "evidence_built", "evidence_upload_failed"]
    # Everything is still there locally, and verifies.
    assert longrun_cli("verify", job_id, "--root", str(tmp_path), cwd=tmp_path).returncode == 0

    boto3.client(
        "s3", endpoint_url=moto_server, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name="us-east-1"
    ).create_bucket(Bucket="runs-later")
    p = longrun_cli("evidence", "push", job_id, "--root", str(tmp_path), cwd=tmp_path, env=aws_env(cli_env, moto_server))
    assert p.returncode == 0, p.stderr
    assert Journal(paths.events_file).read()[-1].type == "evidence_uploaded"


def test_run_publishes_evidence_artifacts_in_prefect(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from longrun.flows.job import job_flow

    spec = write_job(tmp_path, SPEC.replace('evidence: {{store: "s3://{bucket}/runs"}}\n', "").format())
    loaded = load_spec(spec)
    out = job_flow(loaded)(spec=json.loads(loaded.canonical), root=str(tmp_path), source=str(loaded.source))
    assert out["status"] == "COMPLETED"
    key = f"evidence-{loaded.job_id}"
    with get_client(sync_client=True) as client:
        link = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
        md = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{key}-manifest"])))
    # Prefect 3.8.8 stores link artifacts as markdown "[text](link)".
    assert link and link[0].type in ("link", "markdown") and "evidence bundle" in str(link[0].data)
    assert f"{loaded.job_id}.tar.gz" in str(link[0].data)
    assert md and md[0].type == "markdown" and loaded.job_id in md[0].data


def test_a_store_block_that_does_not_exist_is_refused_before_any_work(cli_env, tmp_path):
    """Learn of a missing block at the start, not after an unattended run did its work."""
    spec = write_job(tmp_path, SPEC.replace('"s3://{bucket}/runs"', "longrun-s3-evidence-store/never-saved").format())
    job_id = load_spec(spec).job_id
    r = longrun_cli("run", str(spec), "--json", "--root", str(tmp_path), cwd=tmp_path, env=cli_env)
    assert r.returncode == 2, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert (out["status"], out["code"]) == ("FAILED", "evidence_store_invalid")
    assert "never-saved" in out["message"] and "Traceback" not in r.stderr
    events = Journal(JobPaths(tmp_path, job_id).events_file).read()
    assert [e.type for e in events] == ["job_registered", "run_failed"]  # no iteration, no stage
    assert not (tmp_path / "ws" / "out.txt").exists()
