"""Deployments (SPEC O2): ``longrun deploy``/``trigger``, prefect.yaml, cron in IANA zones, idempotent triggers.

Real parts only: the session's ``prefect server start``, a ``prefect worker start``
subprocess polling a process work pool, ``prefect deploy --all``, ``run_deployment``
from threads and the REST API with plain HTTP.
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from conftest import REPO, api, longrun_cli, stop_group
from scaleout import delete_pool, deploy_job, job_spec, start_worker_process, wait_final, wait_worker_registered

from longrun.flows.deploy import (
    ENTRYPOINT_FILE,
    ENTRYPOINT_MODULE,
    ScheduleSpec,
    intended_run_key,
    plan_deployment,
)
from longrun.flows.deploy_runner import next_run_times
from longrun.journal.local import Journal
from longrun.journal.runs import list_runs, run_id_for
from longrun.spec import load_spec
from longrun.spec.loader import spec_document
from longrun.storage.paths import JobPaths

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

POOL = "longrun-process"  # the worker's pool, and the one deployments/prefect.yaml names
IDLE_POOL = "longrun-idle"  # no worker polls it: runs there stay Scheduled
BERLIN = ZoneInfo("Europe/Berlin")
EXAMPLE_SPEC = "jobspecs/examples/fix-failing-test.yaml"


# ---------------------------------------------------------------- helpers


def _env(prefect_server, **extra: str) -> dict[str, str]:
    return {**os.environ, **prefect_server["env"], "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _runs_of(client, deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=200,
        offset=0,
    )


def _run_journal(root: Path, job_id: str, key: str) -> Journal:
    """The journal of the run of ``job_id`` that intended run ``key`` names."""
    return Journal(JobPaths(root, run_id_for(job_id, key)).events_file)


def _wait_final(flow_run_id, timeout: float, log: Path | None = None):
    with _client() as client:
        return wait_final(client, flow_run_id, timeout, log)


def _wait_waiting(flow_run_id, journal: Journal, log: Path, timeout: float = 180):
    """The flow run's state once Prefect shows it paused and the journal says WAITING_APPROVAL."""
    deadline = time.monotonic() + timeout
    with _client() as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_paused() and journal.path.exists() and journal.state().status == "WAITING_APPROVAL":
                return state
            assert time.monotonic() < deadline, (state, log.read_text()[-3000:])
            time.sleep(0.5)


def _next_dst_change(tz: ZoneInfo, after: datetime) -> datetime:
    """Midnight UTC of the first day on which ``tz``'s UTC offset differs from the day before."""
    day = after.astimezone(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    offset = day.astimezone(tz).utcoffset()
    for _ in range(400):
        day += timedelta(days=1)
        if day.astimezone(tz).utcoffset() != offset:
            return day.replace(hour=0)
    raise AssertionError(f"{tz} has no DST change within 400 days")


# ---------------------------------------------------------------- the worker


@pytest.fixture(scope="module")
def worker(prefect_server, tmp_path_factory):
    """A process work pool and a real ``prefect worker start`` polling it every second."""
    env = _env(prefect_server, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="INFO")
    subprocess.run(
        [sys.executable, "-m", "prefect", "work-pool", "create", POOL, "--type", "process", "--overwrite"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    proc = start_worker_process(env, POOL, "longrun-test-worker", log_path)
    try:
        with _client() as client:
            wait_worker_registered(client, POOL, "longrun-test-worker", proc, log_path)
        yield {"pool": POOL, "log": log_path, "pid": proc.pid}
    finally:
        stop_group(proc, grace=20)
        _delete_pool(POOL)


def _delete_pool(pool: str) -> None:
    """Delete a work pool and the deployments on it (by name, on the session server)."""
    with _client() as client:
        delete_pool(client, pool)


@pytest.fixture(scope="module", autouse=True)
def _idle_pool_cleanup(prefect_server):
    """``longrun deploy --pool longrun-idle`` creates the idle pool; remove it and its deployments at the end."""
    yield
    _delete_pool(IDLE_POOL)


# ---------------------------------------------------------------- pure helpers


def test_intended_run_key_is_one_key_per_intended_run():
    job = "0123456789ab"
    at = datetime(2030, 1, 15, 2, 0, tzinfo=BERLIN)
    key = intended_run_key(job, at)
    assert key == "longrun:0123456789ab:at:2030-01-15T01:00:00Z"
    # The same instant in any zone or notation is the same intended run.
    assert intended_run_key(job, at.astimezone(UTC)) == key
    assert intended_run_key(job, "2030-01-15T01:00:00Z") == key
    assert intended_run_key(job, "2030-01-15T02:00:00+01:00") == key
    assert intended_run_key(job, at + timedelta(days=1)) != key
    assert intended_run_key("fedcba987654", at) != key  # scoped by job
    # An explicit key names the run (and wins over a time).
    assert (
        intended_run_key(job, explicit_key="nightly-7")
        == intended_run_key(job, at, "nightly-7")
        == "longrun:0123456789ab:key:nightly-7"
    )
    # Neither: every trigger is its own run.
    assert intended_run_key(job) != intended_run_key(job)
    for bad in [("nope", None, None), (job, "2030-01-15T02:00", None), (job, None, "  ")]:
        with pytest.raises(ValueError):
            intended_run_key(*bad)


def test_plan_names_parameters_tags(tmp_path):
    spec = job_spec(tmp_path, "plan-me", ("30 6 * * 1-5", "America/New_York"))
    loaded = load_spec(spec)
    plan = plan_deployment(loaded, tmp_path / "root")
    assert (plan.flow_name, plan.deployment_name, plan.full_name) == ("plan-me", "plan-me", "plan-me/plan-me")
    assert plan.parameters["root"] == str((tmp_path / "root").resolve())
    assert plan.parameters["source"] == str(spec.resolve())
    assert plan.parameters["spec"] == spec_document(loaded.spec)
    assert plan.tags == ["longrun", "job:plan-me", f"job-id:{loaded.job_id}", "example"]
    assert plan.schedule.to_dict() == {"cron": "30 6 * * 1-5", "timezone": "America/New_York"}
    assert (plan.concurrency_limit, plan.collision_strategy) == (1, "ENQUEUE")
    assert plan_deployment(loaded, tmp_path, name="nightly").full_name == "plan-me/nightly"
    with pytest.raises(ValueError):
        plan_deployment(loaded, tmp_path, name="a/b")


def test_committed_prefect_yaml_matches_the_example_spec():
    """deployments/prefect.yaml is rendered from the spec; fail when they drift apart."""
    import importlib.util

    mod_spec = importlib.util.spec_from_file_location("longrun_render", REPO / "deployments" / "render.py")
    render = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(render)
    committed = (REPO / "deployments" / "prefect.yaml").read_text()
    assert committed == render.render(), "deployments/prefect.yaml is stale: run python deployments/render.py"

    doc = yaml.safe_load(committed)
    (dep,) = doc["deployments"]
    loaded = load_spec(REPO / EXAMPLE_SPEC)
    from longrun.spec.loader import job_id_for, validate_spec_data

    assert job_id_for(validate_spec_data(dep["parameters"]["spec"])) == loaded.job_id
    assert dep["entrypoint"] == ENTRYPOINT_FILE
    assert dep["work_pool"]["name"] == POOL
    assert dep["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert dep["schedules"][0]["timezone"] == "Europe/Berlin"
    assert f"job-id:{loaded.job_id}" in dep["tags"]
    assert doc["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ repo.stdout }}"}}]
    assert doc["push"] is None and all("docker" not in json.dumps(step) for step in doc["build"])


# ---------------------------------------------------------------- worker runs


def test_deploy_to_a_process_pool_and_a_real_worker_runs_it(worker, prefect_server, tmp_path):
    from prefect.deployments import run_deployment

    env = _env(prefect_server)
    spec = job_spec(tmp_path, "deploy-worker")
    root = tmp_path / "root"
    doc = deploy_job(env, spec, "--pool", POOL, "--root", str(root))
    job_id = doc["job_id"]
    assert doc["name"] == "deploy-worker/deploy-worker" and doc["flow"] == "deploy-worker"
    assert doc["pool"] == POOL and doc["pool_created"] is False
    assert doc["entrypoint"] == ENTRYPOINT_MODULE
    assert doc["parameters"] == {"root": str(root.resolve()), "source": str(spec.resolve())}

    with _client() as client:
        dep = client.read_deployment_by_name("deploy-worker/deploy-worker")
        assert str(dep.id) == doc["deployment_id"]
        assert dep.work_pool_name == POOL
        assert dep.entrypoint == ENTRYPOINT_MODULE and not dep.pull_steps  # the installed package; nothing built
        assert dep.parameters["spec"] == spec_document(load_spec(spec).spec)
        assert dep.parameters["root"] == str(root.resolve())
        assert set(dep.tags) == {"longrun", "job:deploy-worker", f"job-id:{job_id}", "example"}
        assert dep.global_concurrency_limit.limit == 1
        assert dep.concurrency_options.collision_strategy.value == "ENQUEUE"

    fr = run_deployment(
        "deploy-worker/deploy-worker", timeout=0, idempotency_key=intended_run_key(job_id, explicit_key="worker-test")
    )
    final = _wait_final(fr.id, 180, worker["log"])
    assert final.state.is_completed(), (final.state, worker["log"].read_text()[-4000:])
    assert final.name == f"deploy-worker-{job_id}"  # renamed by the entry flow, as for `longrun run`
    with _client() as client:
        assert client.read_flow(final.flow_id).name == "deploy-worker"

    # The journal under the deployment's root replays to COMPLETED.
    state = _run_journal(root, job_id, "worker-test").state()  # the trigger's key names the run
    assert state.status == "COMPLETED" and state.iterations_finished == 3
    assert str(fr.id) in state.runs
    assert (root / ".maestro/workspaces/hello-loop/hello.txt").read_text().count("hello from iteration") == 3


def test_prefect_deploy_all_accepts_prefect_yaml_and_the_worker_runs_it(worker, prefect_server, tmp_path):
    env = _env(prefect_server)
    r = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "longrun-job/fix-failing-test" in out
    assert not re.search(r"(?i)docker|building image|pushing image", out), out

    loaded = load_spec(REPO / EXAMPLE_SPEC)
    with _client() as client:
        dep = client.read_deployment_by_name("longrun-job/fix-failing-test")
        assert dep.entrypoint == ENTRYPOINT_FILE
        assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
        assert dep.parameters["root"] == str(REPO)
        assert dep.parameters["source"] == str(REPO / EXAMPLE_SPEC)
        assert dep.parameters["spec"] == spec_document(loaded.spec)
        (sched,) = dep.schedules
        assert (sched.schedule.cron, sched.schedule.timezone, sched.active) == ("0 2 * * *", "Europe/Berlin", True)
        assert dep.global_concurrency_limit.limit == 1
        assert dep.concurrency_options.collision_strategy.value == "ENQUEUE"
        assert dep.work_pool_name == POOL
        assert {"longrun", "job:fix-failing-test", f"job-id:{loaded.job_id}"} <= set(dep.tags)
        # Its 02:00 runs must not fire into the repository while the worker polls this pool.
        client.pause_deployment(dep.id)

    # Run it for real: pull step -> repository, file entrypoint, root overridden to tmp_path.
    root = tmp_path / "root"
    repo_job = REPO / ".maestro" / "jobs" / loaded.job_id
    existed = repo_job.exists()
    t = longrun_cli(
        "trigger",
        "longrun-job/fix-failing-test",
        "--key",
        "prefect-yaml-test",
        "--root",
        str(root),
        "--json",
        cwd=tmp_path,
        env=env,
    )
    assert t.returncode == 0, t.stdout + t.stderr
    run = json.loads(t.stdout)
    assert run["idempotency_key"] == f"longrun:{loaded.job_id}:key:prefect-yaml-test"
    final = _wait_final(run["flow_run_id"], 180, worker["log"])
    assert final.state.is_completed(), (final.state, worker["log"].read_text()[-4000:])
    assert final.name == f"fix-failing-test-{loaded.job_id}"
    state = _run_journal(root, loaded.job_id, "prefect-yaml-test").state()
    assert state.status == "COMPLETED" and state.iterations_finished == 2
    assert repo_job.exists() == existed  # nothing written into the repository


# ---------------------------------------------------------------- cron


def test_cron_schedule_keeps_its_iana_time_zone_across_dst(prefect_server, tmp_path):
    env = _env(prefect_server)
    spec = job_spec(tmp_path, "deploy-cron", ("0 2 * * *", "Europe/Berlin"))
    doc = deploy_job(env, spec, "--pool", IDLE_POOL, "--root", str(tmp_path / "root"))
    assert doc["schedule"] == {"cron": "0 2 * * *", "timezone": "Europe/Berlin"}
    assert len(doc["next_runs"]) == 3
    for iso in doc["next_runs"]:
        local = datetime.fromisoformat(iso).astimezone(BERLIN)
        assert (local.hour, local.minute) == (2, 0)
        assert datetime.fromisoformat(iso).utcoffset() == local.utcoffset()  # printed in the spec's zone

    with _client() as client:
        dep = client.read_deployment_by_name("deploy-cron/deploy-cron")
        (sched,) = dep.schedules
        assert (sched.schedule.cron, sched.schedule.timezone) == ("0 2 * * *", "Europe/Berlin")

    # Prefect's cron evaluation around the next DST change in Berlin: 02:00 wall clock
    # on both sides, so the UTC time moves by an hour.
    change = _next_dst_change(BERLIN, datetime.now(UTC))
    dates = next_run_times(ScheduleSpec("0 2 * * *", "Europe/Berlin"), n=8, start=change - timedelta(days=4))
    before = [d for d in dates if d < change - timedelta(days=1)]
    after = [d for d in dates if d > change + timedelta(days=1)]
    assert before and after
    assert all((d.hour, d.minute) == (2, 0) for d in before + after)
    assert {d.utcoffset() for d in before} != {d.utcoffset() for d in after}
    assert {d.astimezone(UTC).hour for d in before} != {d.astimezone(UTC).hour for d in after}


def test_server_schedules_cron_runs_in_the_spec_time_zone(prefect_server, tmp_path):
    """The Prefect server itself creates the runs: at 02:00 Berlin on both sides of a DST change."""
    env = _env(prefect_server)
    spec = job_spec(tmp_path, "deploy-cron-server", ("0 2 * * *", "Europe/Berlin"))
    doc = deploy_job(env, spec, "--pool", IDLE_POOL, "--root", str(tmp_path / "root"))
    change = _next_dst_change(BERLIN, datetime.now(UTC))
    start, end = change - timedelta(days=4), change + timedelta(days=4)
    # What the scheduler service does, for a chosen window: POST /deployments/{id}/schedule.
    r = api(
        "POST",
        f"{prefect_server['url']}/deployments/{doc['deployment_id']}/schedule",
        {
            "start_time": start.isoformat(),
            "end_time": end.isoformat(),
            "min_runs": 8,
            "max_runs": 20,
            "min_time": (end - start).total_seconds(),
        },
    )
    if r.status_code >= 500:
        log = Path(prefect_server["home"], "server.log").read_text()
        if "Can't evaluate bulk DML statement" in log:
            import sqlalchemy

            pytest.fail(
                f"the Prefect server cannot insert scheduled flow runs with SQLAlchemy {sqlalchemy.__version__} "
                "(sqlalchemy.exc.InvalidRequestError: Can't evaluate bulk DML statement): cron schedules never "
                "produce runs. Prefect 3.8.8 needs sqlalchemy<2.1 (pin it in pyproject.toml)."
            )
    assert r.status_code in (200, 201), r.text + "\n" + Path(prefect_server["home"], "server.log").read_text()[-4000:]

    with _client() as client:
        runs = [fr for fr in _runs_of(client, doc["deployment_id"]) if start <= fr.expected_start_time <= end]
    times = sorted(fr.expected_start_time for fr in runs)
    assert len(times) >= 7, times
    expected = next_run_times(ScheduleSpec("0 2 * * *", "Europe/Berlin"), n=len(times), start=start)
    assert times == expected  # the server and longrun deploy compute the same instants
    local = [t.astimezone(BERLIN) for t in times]
    off_day = [t for t in local if abs(t - change.astimezone(BERLIN)) > timedelta(days=1)]
    assert all((t.hour, t.minute) == (2, 0) for t in off_day), local
    assert len({t.utcoffset() for t in off_day}) == 2  # +01:00 on one side, +02:00 on the other

    # Triggering the intended run at one of those times returns the scheduler's run.
    target = next(fr for fr in runs if fr.expected_start_time == times[0])
    t = longrun_cli(
        "trigger", "deploy-cron-server", "--at", times[0].astimezone(BERLIN).isoformat(), "--json", cwd=tmp_path, env=env
    )
    assert t.returncode == 0, t.stdout + t.stderr
    got = json.loads(t.stdout)
    assert got["flow_run_id"] == str(target.id) and got["scheduled_run_reused"] is True


# ---------------------------------------------------------------- duplicate-run guardrails


def test_concurrent_triggers_of_one_intended_run_make_one_flow_run(prefect_server, tmp_path):
    from prefect.deployments import run_deployment

    env = _env(prefect_server)
    spec = job_spec(tmp_path, "deploy-dedupe")
    doc = deploy_job(env, spec, "--pool", IDLE_POOL, "--root", str(tmp_path / "root"))
    name, job_id, dep_id = doc["name"], doc["job_id"], doc["deployment_id"]
    at = datetime(2030, 1, 15, 2, 0, tzinfo=BERLIN)
    variants = [at, at.astimezone(UTC), "2030-01-15T01:00:00Z", "2030-01-15T02:00:00+01:00"]

    def fire(n: int, when) -> set[str]:
        """n concurrent triggers (threads; one of them plain REST when n >= 10) of the run at ``when``."""
        barrier = threading.Barrier(n)
        ids: list[str] = []
        errors: list[BaseException] = []

        def by_run_deployment(i: int) -> None:
            key = intended_run_key(job_id, variants[i % len(variants)] if when is at else when)
            barrier.wait()
            ids.append(str(run_deployment(name, timeout=0, idempotency_key=key).id))

        def by_rest(_: int) -> None:
            barrier.wait()
            resp = api(
                "POST",
                f"{prefect_server['url']}/deployments/{dep_id}/create_flow_run",
                {"idempotency_key": intended_run_key(job_id, when)},
            )
            resp.raise_for_status()
            ids.append(resp.json()["id"])

        def guard(fn, i):
            try:
                fn(i)
            except BaseException as exc:
                errors.append(exc)

        # Each thread runs in a copy of this context: the session server's settings live in a contextvar.
        threads = [
            threading.Thread(
                target=contextvars.copy_context().run,
                args=(guard, by_rest if (n >= 10 and i == n - 1) else by_run_deployment, i),
            )
            for i in range(n)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        assert not errors, errors
        assert len(ids) == n
        return set(ids)

    first = fire(10, at)
    assert len(first) == 1
    with _client() as client:
        assert len(_runs_of(client, dep_id)) == 1

    # `longrun trigger` of the same intended run (by job name) gets the same flow run.
    t = longrun_cli("trigger", "deploy-dedupe", "--at", "2030-01-15T02:00:00+01:00", "--json", cwd=tmp_path, env=env)
    assert t.returncode == 0, t.stdout + t.stderr
    assert json.loads(t.stdout)["flow_run_id"] in first

    # A different intended run is a second flow run, however often it is triggered.
    second = fire(3, at + timedelta(days=1))
    assert len(second) == 1 and second != first
    with _client() as client:
        assert len(_runs_of(client, dep_id)) == 2

    # An explicit key names an intended run too.
    keyed = {
        json.loads(longrun_cli("trigger", name, "--key", "release-42", "--json", cwd=tmp_path, env=env).stdout)["flow_run_id"]
        for _ in range(2)
    }
    assert len(keyed) == 1
    with _client() as client:
        assert len(_runs_of(client, dep_id)) == 3


# ---------------------------------------------------------------- serve


def test_deploy_serve_runs_triggers_and_stops_on_ctrl_c(prefect_server, tmp_path):
    from prefect.deployments import run_deployment

    env = _env(prefect_server)
    spec = job_spec(tmp_path, "deploy-served")
    root = tmp_path / "root"
    proc = subprocess.Popen(
        [sys.executable, "-m", "longrun.cli.main", "deploy", str(spec), "--serve", "--root", str(root), "--json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        doc = json.loads(line)
        assert doc["mode"] == "serve" and doc["pool"] is None and doc["name"] == "deploy-served/deploy-served"
        fr = run_deployment(doc["name"], timeout=0, idempotency_key=intended_run_key(doc["job_id"], explicit_key="served"))
        final = _wait_final(fr.id, 120)
        assert final.state.is_completed(), final.state
        assert _run_journal(root, doc["job_id"], "served").state().status == "COMPLETED"
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) == 0
        err = proc.stderr.read()
        assert "stopped serving" in err and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with _client() as client:
        assert client.read_deployment(doc["deployment_id"]).paused  # pause_on_shutdown


# ---------------------------------------------------------------- bad input


def test_deploy_and_trigger_bad_input_exit_2_without_traceback(prefect_server, tmp_path):
    env = _env(prefect_server)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\ngoal: g\nallowed_tools: [python]\nmodel_policy: {default: m}\n"
        "stages: [{id: a, run: [python]}]\nschedule: {cron: '0 2 * * *', timezone: Mars/Olympus}\n"
    )
    cases = [
        (("deploy", str(bad)), "job_invalid_spec"),
        (("deploy", str(tmp_path / "missing.yaml")), "job_not_found"),
        (("deploy", str(job_spec(tmp_path, "deploy-badname")), "--name", "a/b"), "usage_error"),
        (("trigger", "no-such-job"), "deployment_not_found"),
        (("trigger", "no-such-job", "--at", "2030-01-01T02:00"), "usage_error"),
    ]
    for args, code in cases:
        r = longrun_cli(*args, cwd=tmp_path, env=env)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith(code), (args, r.stderr)
        assert "Traceback" not in r.stdout + r.stderr
        j = longrun_cli(*args, "--json", cwd=tmp_path, env=env)
        assert j.returncode == 2 and json.loads(j.stdout)["error"]["code"] == code
    assert "schedule.timezone" in longrun_cli("deploy", str(bad), cwd=tmp_path, env=env).stderr


SUSPEND_SPEC = """
name: suspends
goal: wait for a human without holding the worker
workspace: {{path: ws, template: template}}
allowed_tools: [python]
model_policy: {{default: m}}
# The stages count their runs in a file outside the workspace: not a sandbox test.
sandbox: none
approvals:
  - {{before: second, mode: suspend, timeout: 600}}
stages:
  - {{id: first, run: [python, -c, "open('{counter}', 'a').write('first\\\\n')"]}}
  - {{id: second, run: [python, -c, "open('{counter}', 'a').write('second\\\\n')"]}}
quality_gates:
  required:
    - {{id: ok, kind: command_pass, run: [python, -c, "pass"]}}
"""


def test_suspend_mode_frees_the_worker_and_resumes_from_persisted_results(worker, prefect_server, tmp_path):
    from conftest import write_job
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort
    from prefect.deployments import run_deployment

    counter = tmp_path / "counter.txt"
    spec = write_job(tmp_path, SUSPEND_SPEC.format(counter=counter))
    env = _env(prefect_server)
    root = tmp_path / "root"
    doc = deploy_job(env, spec, "--pool", POOL, "--root", str(root))
    job_id = doc["job_id"]
    fr = run_deployment(doc["name"], timeout=0)
    journal = _run_journal(root, job_id, f"flow-run:{fr.id}")  # a deployment run without a key is its own run

    # The run suspends before 'second': its process exits (Prefect shows it Suspended/Paused).
    state = _wait_waiting(fr.id, journal, worker["log"])
    assert state.name == "Suspended"
    assert counter.read_text() == "first\n"

    r = longrun_cli("approve", job_id, "--step", "before-second", "--approver", "ops", "--root", str(root), cwd=tmp_path, env=env)
    assert r.returncode == 0 and "resumed paused flow run" in r.stdout, r.stdout + r.stderr
    final = _wait_final(fr.id, 180, worker["log"])
    assert final.state.is_completed(), final.state

    # 'first' ran once: the resumed flow rebuilt it from the journal, without asking Prefect for it.
    assert counter.read_text() == "first\nsecond\n"
    st = journal.state()
    assert st.status == "COMPLETED"
    assert [(e.payload.step, e.payload.approver) for e in journal.read() if e.type == "approved"] == [("before-second", "ops")]
    with _client() as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])), sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=50
        )
    states = [(t.name, t.state.name) for t in runs]
    assert [s for n, s in states if n == "first#1"] == ["Completed"], states


ESCALATE_SUSPEND_SPEC = """
name: escalates-suspended
goal: hand a failing gate to a human without holding the worker
workspace: {{path: ws, template: template}}
allowed_tools: [python]
model_policy: {{default: m}}
# The stages count their runs in a file outside the workspace: not a sandbox test.
sandbox: none
approvals:
  - {{escalate: ready, mode: suspend, timeout: 600}}
stages:
  - {{id: work, run: [python, -c, "import os; open('{counter}', 'a').write('work ' + os.environ['LONGRUN_ITERATION'] + '\\\\n')"]}}
quality_gates:
  required:
    - id: ready
      kind: command_pass
      run: [python, -c, "import os, sys; sys.exit(0 if os.path.exists('{go}') else 1)"]
      on_failure: {{action: escalate, max_retries: 0}}
"""


def test_an_escalation_in_suspend_mode_frees_the_worker_and_goes_on_after_approval(worker, prefect_server, tmp_path):
    from conftest import write_job
    from prefect.deployments import run_deployment

    counter, go = tmp_path / "counter.txt", tmp_path / "go"
    spec = write_job(tmp_path, ESCALATE_SUSPEND_SPEC.format(counter=counter, go=go))
    env = _env(prefect_server)
    root = tmp_path / "root"
    doc = deploy_job(env, spec, "--pool", POOL, "--root", str(root))
    job_id = doc["job_id"]
    fr = run_deployment(doc["name"], timeout=0)
    journal = _run_journal(root, job_id, f"flow-run:{fr.id}")  # a deployment run without a key is its own run

    state = _wait_waiting(fr.id, journal, worker["log"])
    assert state.name == "Suspended"  # the entry's mode: the worker's process is gone
    (esc,) = [e for e in journal.read() if e.type == "escalated"]
    assert (esc.payload.step, esc.payload.iteration) == ("escalate:ready", 1)
    requested = [e for e in journal.read() if e.type == "approval_requested"]
    assert [(e.payload.step, e.payload.mode, e.payload.timeout_s) for e in requested] == [("escalate:ready", "suspend", 600)]

    go.touch()  # the human fixes what the gate checks, then approves
    r = longrun_cli(
        "approve", job_id, "--step", "escalate:ready", "--approver", "ops", "--root", str(root), cwd=tmp_path, env=env
    )
    assert r.returncode == 0 and "resumed paused flow run" in r.stdout, r.stdout + r.stderr
    final = _wait_final(fr.id, 180, worker["log"])
    assert final.state.is_completed(), final.state
    st = journal.state()
    assert (st.status, st.iterations_finished) == ("COMPLETED", 2)
    assert counter.read_text() == "work 1\nwork 2\n"  # iteration 1's stage came back from its persisted result


# ---------------------------------------------------------------- runs per intended run


def test_each_keyed_trigger_is_its_own_run_and_a_repeated_key_is_not(worker, prefect_server, tmp_path):
    """A job is a definition: every intended run does the work again, with its own counters; a key runs once."""
    from prefect.deployments import run_deployment

    env = _env(prefect_server)
    spec = job_spec(tmp_path, "deploy-runs")
    root = tmp_path / "root"
    doc = deploy_job(env, spec, "--pool", POOL, "--root", str(root))
    job_id = doc["job_id"]
    finals = {}
    for key in ("night-1", "night-2"):
        fr = run_deployment(doc["name"], timeout=0, idempotency_key=intended_run_key(job_id, explicit_key=key))
        finals[key] = _wait_final(fr.id, 180, worker["log"])
        assert (finals[key].state.type.value, finals[key].state.name) == ("COMPLETED", "Completed"), finals[key].state
    # Each run did the job's stages itself, with its own counters (not "nothing to do" for the second): the
    # first needs 3 iterations to write 3 lines; the second finds them in the workspace and adds its own.
    for key, iterations in (("night-1", 3), ("night-2", 1)):
        state = _run_journal(root, job_id, key).state()
        assert (state.status, state.iterations_finished, state.run_key) == ("COMPLETED", iterations, key)
        assert [e.type for e in _run_journal(root, job_id, key).read()].count("stage_finished") == iterations
    assert (root / ".maestro/workspaces/hello-loop/hello.txt").read_text().count("hello from iteration") == 4
    # The same intended run again, as a new flow run that only names the key: no new run, no work.
    again = run_deployment(doc["name"], timeout=0, parameters={"run_key": "night-1"})
    assert again.id != finals["night-1"].id
    final = _wait_final(again.id, 180, worker["log"])
    assert final.state.is_completed() and final.state.message.startswith("COMPLETED"), final.state
    assert [c.key for c in list_runs(root, job_id)] == ["night-1", "night-2"]
    assert [e.type for e in _run_journal(root, job_id, "night-1").read()].count("stage_finished") == 3
    assert (root / ".maestro/workspaces/hello-loop/hello.txt").read_text().count("hello from iteration") == 4
    runs = longrun_cli("runs", job_id, "--root", str(root), "--json", cwd=tmp_path, env=env)
    assert [r["key"] for r in json.loads(runs.stdout)["runs"]] == ["night-1", "night-2"]


PAUSING_SPEC = """
name: {name}
goal: wait for a human, while the next tick comes
workspace: {{path: ws, template: template}}
allowed_tools: [python]
model_policy: {{default: m}}
approvals:
  - {{before: work, timeout: 600, poll_interval: 1}}
stages:
  - {{id: work, run: [python, -c, "open('ran.txt', 'a').write('x')"]}}
quality_gates:
  required:
    - {{id: made, kind: artifact_exists, path: ran.txt}}
"""


def test_a_paused_run_keeps_the_next_tick_from_running_beside_it(worker, prefect_server, tmp_path):
    from conftest import write_job
    from prefect.deployments import run_deployment

    env = _env(prefect_server)
    spec = write_job(tmp_path, PAUSING_SPEC.format(name="deploy-paused"))
    root = tmp_path / "root"
    doc = deploy_job(env, spec, "--pool", POOL, "--root", str(root))
    job_id = doc["job_id"]
    first = run_deployment(doc["name"], timeout=0, idempotency_key=intended_run_key(job_id, "2030-01-01T02:00:00Z"))
    journal = _run_journal(root, job_id, "at:2030-01-01T02:00:00Z")  # the time of a tick names its run
    _wait_waiting(first.id, journal, worker["log"])
    second = run_deployment(doc["name"], timeout=0, idempotency_key=intended_run_key(job_id, "2030-01-02T02:00:00Z"))
    other = _run_journal(root, job_id, "at:2030-01-02T02:00:00Z")
    # While the first run waits for a human, the second never works: it is refused (Cancelled, Blocked),
    # or Prefect holds it for the concurrency slot.
    deadline = time.monotonic() + 45
    with _client() as client:
        while time.monotonic() < deadline:
            st = client.read_flow_run(second.id).state
            assert not (other.path.exists() and "stage_started" in [e.type for e in other.read()]), "ran beside a paused run"
            if st.is_final():
                break
            time.sleep(1)
    blocked = st.is_final()
    if blocked:
        assert (st.type.value, st.name) == ("CANCELLED", "Blocked"), st
        assert "job_already_running" in st.message and "waiting for approval" in st.message
        assert not other.path.exists()  # nothing claimed: the tick can be run again later
    r = longrun_cli(
        "approve", f"{job_id}@at:2030-01-01T02:00:00Z", "--approver", "ops", "--root", str(root), cwd=tmp_path, env=env
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert _wait_final(first.id, 180, worker["log"]).state.is_completed()
    if not blocked:
        assert _wait_final(second.id, 240, worker["log"]).state.is_completed()
        done = [e.ts for e in journal.read() if e.type == "run_completed"][0]
        assert min(e.ts for e in other.read() if e.type == "run_started") > done


def test_deploy_serve_stopped_right_after_it_starts_pauses_its_schedule(prefect_server, tmp_path):
    env = _env(prefect_server)
    for sig in (signal.SIGTERM, signal.SIGINT):
        name = f"serve-stop-{sig.name.lower()}"
        spec = job_spec(tmp_path, name, ("0 3 * * *", "Europe/Berlin"))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "longrun.cli.main",
                "deploy",
                str(spec),
                "--serve",
                "--root",
                str(tmp_path / "root"),
                "--json",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            doc = json.loads(proc.stdout.readline())  # deployed: its schedule is active from here
            proc.send_signal(sig)
            assert proc.wait(timeout=60) == 0
            err = proc.stderr.read()
            assert f"stopped serving {name}/{name} on {sig.name}" in err and "schedule is paused" in err, err
            assert "Traceback" not in err and "never awaited" not in err, err
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        with _client() as client:
            assert client.read_deployment(doc["deployment_id"]).paused, sig
