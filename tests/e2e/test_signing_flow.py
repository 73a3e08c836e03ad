"""A run signs its evidence manifest with a key from a real Prefect Secret block; ``verify --key`` checks it."""

from __future__ import annotations

import json

import pytest
from conftest import longrun_cli, write_job
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from longrun.journal.local import Journal
from longrun.spec import load_spec
from longrun.storage.paths import JobPaths

pytestmark = [pytest.mark.prefect]

SPEC = """
name: signed
goal: leave signed evidence
workspace: {path: ws, template: template}
allowed_tools: [python]
model_policy: {default: m}
evidence: {signing_key: prefect-secret/longrun-test-signing}
stages:
  - {id: work, run: [python, -c, "pass"]}
quality_gates:
  required:
    - {id: ok, kind: command_pass, run: [python, -c, "pass"]}
"""


def _keys(tmp_path, name):
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    public = tmp_path / f"{name}.pub.pem"
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return private, public


def test_a_run_signs_its_manifest_and_verify_checks_the_key(cli_env, tmp_path, monkeypatch):
    from prefect.blocks.system import Secret

    for k, v in cli_env.items():
        if k.startswith("PREFECT_"):
            monkeypatch.setenv(k, v)
    private, public = _keys(tmp_path, "release")
    _, other = _keys(tmp_path, "other")
    Secret(value=private).save("longrun-test-signing", overwrite=True)

    spec = write_job(tmp_path, SPEC)
    job_id = load_spec(spec).job_id
    r = longrun_cli("run", str(spec), "--root", str(tmp_path), cwd=tmp_path, env=cli_env)
    assert r.returncode == 0, r.stderr
    built = [e.payload for e in Journal(JobPaths(tmp_path, job_id).events_file).read() if e.type == "evidence_built"][-1]
    assert built.signature == f".maestro/evidence/{job_id}.manifest.json.dsse.json"
    envelope = json.loads((tmp_path / built.signature).read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json" and len(envelope["signatures"]) == 1

    ok = longrun_cli("verify", job_id, "--key", str(public), "--root", str(tmp_path), cwd=tmp_path, env=cli_env)
    assert ok.returncode == 0 and ok.stdout.startswith("OK"), ok.stdout + ok.stderr
    bad = longrun_cli("verify", job_id, "--key", str(other), "--root", str(tmp_path), "--json", cwd=tmp_path, env=cli_env)
    assert bad.returncode == 1
    problems = [m["problem"] for m in json.loads(bad.stdout)["mismatches"]]
    assert any("no signature in the envelope verifies" in p for p in problems), problems
