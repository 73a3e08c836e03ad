"""The read-only commands never import Prefect or boto3.

Each command runs in a fresh interpreter (``main([...])``, as the ``longrun``
console script does) against a real job on disk with a built evidence bundle;
afterwards ``sys.modules`` must hold neither ``prefect`` nor ``boto3``/``botocore``.
How long they take is measured by hand, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import EXAMPLES
from evidence_helpers import make_job

from longrun.evidence.publish import finalize_evidence
from longrun.journal.local import Journal

FORBIDDEN = ("prefect", "boto3", "botocore")

# Runs `longrun ARGS` (or only builds the parser and its help, without ARGS) and
# prints the exit code and the forbidden top-level packages it imported.
PROBE = f"""
import contextlib, io, json, sys
from longrun.cli.main import build_parser, main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    rc = main(sys.argv[1:]) if sys.argv[1:] else len(build_parser().format_help()) and 0
print(json.dumps({{"rc": rc, "loaded": sorted({{m.split(".")[0] for m in sys.modules}} & set({FORBIDDEN!r}))}}))
"""

COMMANDS = {
    "validate": (["validate", "{spec}"], 0),
    "validate --json": (["validate", "{spec}", "--json"], 0),
    "plan": (["plan", "{spec}"], 0),
    "status": (["status", "{job}", "--root", "{root}"], 0),
    "status --json": (["status", "{job}", "--json", "--root", "{root}"], 0),
    "status of no job": (["status", "no-such-job", "--root", "{root}"], 2),
    "list": (["list", "--root", "{root}"], 0),
    "tail": (["tail", "{job}", "-n", "3", "--root", "{root}"], 0),
    "verify job": (["verify", "{job}", "--root", "{root}"], 0),
    "verify manifest": (["verify", "{manifest}"], 0),
    "verify --strict": (["verify", "{job}", "--strict", "--root", "{root}"], 0),
    "stop": (["stop", "{job}", "--by", "test", "--root", "{root}"], 0),
    "server status": (["server", "status"], 0),
    "parser and help only": ([], 0),
}


def _probe(args: list[str], cwd) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_read_only_command_imports_neither_prefect_nor_boto3(tmp_path, name):
    job = make_job(tmp_path, waiver=True)  # a finished job (its strict check waived) ...
    finalize_evidence(job.root, job.job_id, None, Journal(job.events_file))  # ... with its bundle, so verify checks files
    values = {
        "spec": str(EXAMPLES / "fix-failing-test.yaml"),
        "job": job.job_id,
        "root": str(job.root),
        "manifest": str(job.evidence_dir / f"{job.job_id}.manifest.json"),
    }
    template, exit_code = COMMANDS[name]
    result = _probe([a.format(**values) for a in template], cwd=tmp_path)
    assert result == {"rc": exit_code, "loaded": []}, (name, result)
