"""Any worker resumes any job (issue 13): the job root on S3, workspaces from git, two workers.

The production shape, all as processes on 127.0.0.1: a Prefect server on
PostgreSQL (``pg_prefect_server``), moto's S3 server over HTTP, and two process
workers (``scaleout_workers``) that stand for two machines: each has its own
working directory, ``HOME``, ``PREFECT_HOME`` and ``LONGRUN_WORKDIR``. They
share nothing but the Prefect server, the S3 bucket and the git remote. The
deployment holds the root URL and the spec, no path of the deploying machine.

Scenarios:
(a) worker A is SIGKILLed mid-iteration 2; worker B resumes and completes the
    run; no completed stage runs again; the workspace has both iterations' work;
(b) a suspend-mode approval is given while A is gone; B finishes the run;
(c) two flow runs of one intended run start at once on two workers: exactly
    one runs, the other ends ``job_already_running`` having appended nothing;
(d) ``status``/``tail``/``list`` from a third directory show the job;
(e) scenario (a) again with 30 % of S3 requests faulted (errors, drops, and writes
    whose answer is lost): the run completes with no event lost or duplicated.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import longrun_cli
from s3_faults import s3_client, s3_env
from scaleout import deploy_job, wait_final

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.scaleout]

PY = sys.executable

# Two stages per iteration: prep appends "prep N" to prep.txt, then work appends "iteration N"
# to work.txt. On a worker started with SLOW_STAGE=N, work first sleeps in iteration N
# (SLOW_SECONDS, default 120: long enough to kill the machine there, after prep finished).
SPEC = """
name: {name}
goal: two iterations of work, on whichever machine
workspace: {{path: ws, repo: "{repo}", ref: main}}
allowed_tools: [{py}]
model_policy: {{default: m}}
defaults: {{env_passthrough: [SLOW_STAGE, SLOW_SECONDS]}}
stop_conditions: {{max_iterations: 5}}
{approvals}
stages:
  - id: prep
    run: [{py}, -c, "import os; open('prep.txt', 'a').write('prep ' + os.environ['LONGRUN_ITERATION'] + chr(10))"]
  - id: work
    depends_on: [prep]
    run:
      - {py}
      - -c
      - |
        import os, time
        it = os.environ["LONGRUN_ITERATION"]
        if os.environ.get("SLOW_STAGE") == it:
            time.sleep(float(os.environ.get("SLOW_SECONDS", "120")))
        with open("work.txt", "a") as f:
            f.write(f"iteration {{it}}\\n")
quality_gates:
  required:
    - id: two
      kind: command_pass
      run: [{py}, -c, "import sys; sys.exit(0 if open('work.txt').read().count('iteration') >= 2 else 1)"]
"""


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def _origin(tmp_path: Path) -> str:
    """A bare git remote (file://) with one commit on main."""
    src = tmp_path / "origin-src"
    src.mkdir()
    _git("init", "-q", "-b", "main", cwd=src)
    (src / "README.md").write_text("a repository the job works on\n")
    _git("add", "-A", cwd=src)
    _git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "-m", "base", cwd=src)
    bare = tmp_path / "origin.git"
    _git("clone", "-q", "--bare", str(src), str(bare), cwd=tmp_path)
    return bare.as_uri()


class Cluster:
    """The bucket, the deployment and the machines of one scenario."""

    def __init__(self, tmp_path: Path, pg_prefect_server, pool: str, start_worker, endpoint: str, name: str) -> None:
        self.tmp = tmp_path
        self.server = pg_prefect_server
        self.pool = pool
        self.start_worker = start_worker
        bucket = f"so-{uuid.uuid4().hex[:12]}"
        s3_client(endpoint).create_bucket(Bucket=bucket)
        self.url = f"s3://{bucket}/longrun"
        self.endpoint = endpoint
        self.aws = {k: v for k, v in s3_env(endpoint).items() if k.startswith("AWS_")}
        self.name = name
        self.repo = _origin(tmp_path)

    def machine_env(self, label: str) -> tuple[Path, dict]:
        """A directory and CLI environment of a machine that is no worker (the deployer, an operator)."""
        home = self.tmp / label
        (home / "cwd").mkdir(parents=True, exist_ok=True)
        env = self.server.cli_env(**self.aws, LONGRUN_WORKDIR=str(home / "roots"), LONGRUN_ROOT=self.url, HOME=str(home))
        return home / "cwd", env

    def worker(self, label: str, **extra: str):
        return self.start_worker(label, env={**self.aws, **extra})

    def deploy(self, *, approvals: str = "", concurrency: int = 1) -> dict:
        cwd, env = self.machine_env("deployer")
        spec = cwd / f"{self.name}.yaml"
        spec.write_text(SPEC.format(name=self.name, repo=self.repo, py=PY, approvals=approvals))
        doc = deploy_job(env, spec, "--pool", self.pool, "--concurrency", str(concurrency))
        assert doc["parameters"]["root"] == self.url and doc["parameters"]["source"] is None
        assert str(self.tmp) not in json.dumps(doc["parameters"])  # nothing of the deploying machine
        return doc

    def start_run(self, doc: dict, key: str) -> str:
        """A new flow run of the deployment for intended run ``key`` (``run_key`` parameter)."""
        with self.server.client() as client:
            dep = client.read_deployment_by_name(doc["name"])
            fr = client.create_flow_run_from_deployment(dep.id, parameters={"run_key": key})
        return str(fr.id)

    def cli(self, label: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        cwd, env = self.machine_env(label)
        r = longrun_cli(*args, cwd=cwd, env=env, timeout=timeout)
        assert "Traceback" not in r.stderr, r.stderr
        return r

    def events(self, label: str, ref: str) -> list[dict]:
        r = self.cli(label, "tail", ref, "--json")
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines()]

    def wait_events(self, ref: str, found, what: str, timeout: float = 180, logs=()) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            r = self.cli("watcher", "tail", ref, "--json")
            if r.returncode == 0:
                events = [json.loads(line) for line in r.stdout.splitlines()]
                if found(events):
                    return events
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout}s:\n" + "\n".join(w.log()[-3000:] for w in logs))
            time.sleep(0.5)

    def handoff(self, doc: dict, key: str):
        """Run ``key`` on machine A until stage ``work`` of iteration 2, kill A, resume on machine B to the end."""
        a = self.worker("machine-a", SLOW_STAGE="2")
        fr_a = self.start_run(doc, key)
        self.wait_events(
            _run_ref(doc, key),
            lambda ev: any(
                e["type"] == "stage_started" and (e["payload"]["iteration"], e["payload"]["stage"]) == (2, "work") for e in ev
            ),
            "stage work of iteration 2 on machine A",
            logs=[a],
        )
        a.kill()  # the machine is gone, between the two stages of iteration 2
        self.crash(fr_a)
        b = self.worker("machine-b")
        fr_b = self.start_run(doc, key)
        with self.server.client() as client:
            final = wait_final(client, fr_b, 300, b.log_path)
        assert final.state.is_completed(), (final.state, b.log()[-4000:])
        assert b.ran(fr_b) and fr_b not in a.log()
        return a, b, fr_a, fr_b

    def crash(self, flow_run_id: str) -> None:
        """What Prefect's zombie detection does for a flow run whose worker died: mark it Crashed."""
        from prefect.states import Crashed

        with self.server.client() as client:
            client.set_flow_run_state(flow_run_id, Crashed(message="its worker died"), force=True)


@pytest.fixture
def cluster(tmp_path, pg_prefect_server, scaleout_pool, scaleout_workers, moto_server, request):
    def make(name: str, endpoint: str | None = None) -> Cluster:
        return Cluster(tmp_path, pg_prefect_server, scaleout_pool, scaleout_workers, endpoint or moto_server, name)

    return make


def _run_ref(doc: dict, key: str) -> str:
    return f"{doc['job_id']}@{key}"


def test_a_killed_worker_s_run_is_resumed_by_another_worker(cluster, pg_prefect_server):
    """(a) and (d): SIGKILL mid-iteration 2 on A; B resumes from the store and the git remote."""
    c = cluster("travel-a")
    doc = c.deploy()
    a, b, fr_a, fr_b = c.handoff(doc, "k1")
    ref = _run_ref(doc, "k1")

    # (d) a third machine sees the job, its runs and its events.
    status = json.loads(c.cli("operator", "status", ref, "--json").stdout)
    assert (status["status"], status["iterations_finished"]) == ("COMPLETED", 2)
    events = c.events("operator", ref)
    finished = [(e["payload"]["iteration"], e["payload"]["stage"]) for e in events if e["type"] == "stage_finished"]
    # Every stage ran once: iteration 1 and prep of iteration 2 on A, work of iteration 2 on B.
    assert finished == [(1, "prep"), (1, "work"), (2, "prep"), (2, "work")]
    split = [e["type"] for e in events].index("run_started", 2)
    assert [(e["payload"]["iteration"], e["payload"]["stage"]) for e in events[split:] if e["type"] == "stage_started"] == [
        (2, "work")
    ]
    starts = [e["payload"]["flow_run_id"] for e in events if e["type"] == "run_started"]
    assert starts == [fr_a, fr_b]
    mat = [e["payload"] for e in events if e["type"] == "workspace_materialized"]
    assert [(m["cloned"], m["iterations"]) for m in mat] == [(True, []), (True, [1])]  # B cloned, replayed 1, then prep of 2
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    listed = json.loads(c.cli("operator", "list", "--json").stdout)["jobs"]
    assert [(j["job"], j["status"]) for j in listed] == [(doc["job_id"], "COMPLETED")]
    # The final workspace (on B) holds both iterations' work; A's holds only what A did.
    (b_ws,) = list(b.workdir.glob("*/ws"))
    assert (b_ws / "work.txt").read_text() == "iteration 1\niteration 2\n"
    assert (b_ws / "prep.txt").read_text() == "prep 1\nprep 2\n"
    assert [p.read_text() for p in a.workdir.glob("*/ws/work.txt")] == ["iteration 1\n"]
    assert c.cli("operator", "verify", ref).returncode == 0


def test_a_suspended_approval_given_while_its_worker_is_gone_is_finished_by_another(cluster, pg_prefect_server):
    """(b): the run suspends on A for an approval; A dies; the approval resumes the flow run on B."""
    c = cluster("travel-b")
    doc = c.deploy(approvals="approvals:\n  - {after: gates, mode: suspend, timeout: 600, poll_interval: 1}")
    a = c.worker("machine-a")
    fr = c.start_run(doc, "k1")
    ref = _run_ref(doc, "k1")
    c.wait_events(ref, lambda ev: any(e["type"] == "approval_requested" for e in ev), "approval request", logs=[a])
    with pg_prefect_server.client() as client:
        deadline = time.monotonic() + 120
        while client.read_flow_run(fr).state.name != "Suspended":
            assert time.monotonic() < deadline, a.log()[-3000:]
            time.sleep(0.5)
    a.kill()
    b = c.worker("machine-b")
    r = c.cli("operator", "approve", ref, "--approver", "alice")
    assert r.returncode == 0 and "resumed paused flow run" in r.stdout, r.stdout + r.stderr
    with pg_prefect_server.client() as client:
        final = wait_final(client, fr, 240, b.log_path)
    assert final.state.is_completed(), (final.state, b.log()[-4000:])
    assert b.ran(fr)  # B picked the resumed flow run up
    events = c.events("operator", ref)
    types = [e["type"] for e in events]
    assert types.count("approved") == 1 and types[-3:] == ["run_completed", "evidence_built", "evidence_uploaded"], types
    (approved,) = [e["payload"] for e in events if e["type"] == "approved"]
    assert approved["approver"] == "alice"
    assert [(e["payload"]["iteration"]) for e in events if e["type"] == "stage_finished"] == [1, 1, 2, 2]  # none again
    (b_ws,) = list(b.workdir.glob("*/ws/work.txt"))
    assert b_ws.read_text() == "iteration 1\niteration 2\n"


def test_two_workers_starting_one_run_at_once_run_it_once(cluster, pg_prefect_server):
    """(c): two flow runs of one intended run, picked up at once by two workers."""
    c = cluster("travel-c")
    doc = c.deploy(concurrency=2)
    # The winner's first stage takes 20 s: long enough to still run when the loser decides.
    workers = [c.worker(m, SLOW_STAGE="1", SLOW_SECONDS="20") for m in ("machine-a", "machine-b")]
    runs = [c.start_run(doc, "same"), c.start_run(doc, "same")]
    with pg_prefect_server.client() as client:
        # Both are picked up and started (the slow stage keeps the winner running meanwhile).
        deadline = time.monotonic() + 120
        while not all(client.read_flow_run(r).state.type.value not in ("SCHEDULED", "PENDING") for r in runs):
            assert time.monotonic() < deadline, "\n".join(w.log()[-2000:] for w in workers)
            time.sleep(0.2)
        finals = {r: wait_final(client, r, 300, workers[0].log_path) for r in runs}
    states = sorted((f.state.type.value, f.state.name) for f in finals.values())
    assert states == [("CANCELLED", "Blocked"), ("COMPLETED", "Completed")], states
    (loser,) = [r for r, f in finals.items() if f.state.name == "Blocked"]
    (winner,) = [r for r in runs if r != loser]
    assert finals[loser].state.message.startswith("job_already_running")
    events = c.events("operator", _run_ref(doc, "same"))
    assert [e["payload"]["flow_run_id"] for e in events if e["type"] == "run_started"] == [winner]
    assert loser not in json.dumps(events)  # the loser appended nothing
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_with_s3_faults_no_event_is_lost_or_duplicated(cluster, pg_prefect_server, s3_fault_proxy, moto_server):
    """(e): every S3 request of both workers has a 30 % chance to fail, be dropped, or land with its answer lost."""
    c = cluster("travel-e", endpoint=s3_fault_proxy.url)
    doc = c.deploy()
    s3_fault_proxy.chaos(0.3, seed=13)
    try:
        c.handoff(doc, "k1")  # the handoff between two machines, under faults too
    finally:
        s3_fault_proxy.chaos(0)
    injected = s3_fault_proxy.injected()
    assert len(injected) >= 20 and {"forward_drop", "forward_500"} & {d.action for d in injected}
    # Some of them were conditional appends that landed with their answer lost.
    assert any(d.conditional == "*" and d.action.startswith("forward_") and d.upstream_status == 200 for d in injected)
    events = c.events("operator", _run_ref(doc, "k1"))
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # no gap, no repeat
    kinds = [e["type"] for e in events]
    for once in ("job_registered", "run_completed", "evidence_built"):
        assert kinds.count(once) == 1, (once, kinds)
    assert kinds.count("run_started") == 2  # A's, then B's
    assert [(e["payload"]["iteration"], e["payload"]["stage"]) for e in events if e["type"] == "stage_finished"] == [
        (1, "prep"),
        (1, "work"),
        (2, "prep"),
        (2, "work"),
    ]
    assert kinds[-1] == "evidence_uploaded", [e for e in events if e["type"].startswith("evidence")]
    assert c.cli("operator", "verify", _run_ref(doc, "k1")).returncode == 0
    # The store's objects are the journal: one per event, each the line the mirror holds.
    bucket, prefix = c.url.removeprefix("s3://").split("/", 1)
    listing = s3_client(moto_server).list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/jobs/")
    event_keys = [o["Key"] for o in listing.get("Contents", []) if "/events/" in o["Key"]]
    assert len(event_keys) == len(events)
