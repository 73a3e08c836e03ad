"""Production-shaped parts for scale-out tests: PostgreSQL, a Prefect server on it, process workers.

Everything runs as a process on 127.0.0.1, started by a fixture and stopped by
its pid (no Docker). ``tests/conftest.py`` loads this module as a plugin, so the
fixtures are there for every test; they start nothing until a test asks:

* ``postgres`` (session): a throw-away PostgreSQL cluster (``Postgres``);
* ``pg_prefect_server`` (session): ``prefect server start`` on that cluster (``PgPrefectServer``);
* ``scaleout_pool`` (function): a fresh process work pool on it, deleted afterwards (its name);
* ``scaleout_workers`` (function): ``start(name=None, *, env=None, pool=None) -> Worker``,
  process workers that stand for separate machines; all of them, and every flow
  run they started, are killed when the test ends, passed or failed;
* ``s3_fault_proxy`` (function): a ``FaultProxy`` (``tests/s3_faults.py``) in front of the session's moto.

PostgreSQL refuses to run as root: as root the cluster is owned by, and the
server runs as, the ``postgres`` system user (Debian's package creates it).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import EXAMPLES, PrefectServer, free_port, longrun_cli
from s3_faults import FaultProxy

PG_DB = "prefect"
PG_USER = "postgres"  # the cluster's superuser; trust auth, 127.0.0.1 only
TAG_VAR = "LONGRUN_TEST_PROC_TAG"  # every process a worker starts inherits it: how kill() finds them all


# ---------------------------------------------------------------- PostgreSQL


class PostgresMissing(RuntimeError):
    pass


def pg_bindir() -> Path:
    """The directory of PostgreSQL's server binaries: from PATH (``pg_ctl``), else Debian's ``/usr/lib/postgresql/<ver>/bin``."""
    found = shutil.which("pg_ctl")
    if found and (Path(found).resolve().parent / "postgres").exists():
        return Path(found).resolve().parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3].split(".")[0]))
    if debian:
        return Path(debian[-1]).parent
    raise PostgresMissing(
        "PostgreSQL is not installed: no pg_ctl on PATH and no /usr/lib/postgresql/<version>/bin/postgres. "
        "Install Debian's server package (apt-get install postgresql; .ci/run does it)."
    )


def _as_postgres_user() -> list[str]:
    """The command prefix that runs a PostgreSQL binary as the ``postgres`` user when we are root (none otherwise)."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresMissing("running as root and there is no 'postgres' user to run PostgreSQL as") from None
    if setpriv := shutil.which("setpriv"):  # execs in place: the pid we hold is the server's
        return [setpriv, "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
    return [shutil.which("runuser") or "runuser", "-u", "postgres", "--"]


class Postgres:
    """A throw-away cluster: ``initdb`` in a temp dir, the server on 127.0.0.1 and a free port, one database.

    ``url`` is the SQLAlchemy/asyncpg URL of the database; ``psql(sql)`` runs a
    query and returns its rows as text. ``stop()`` ends it by pid (``pg_ctl
    stop -m fast``, then SIGKILL of its process group) and removes the cluster.
    """

    def __init__(self, log_dir: Path, db: str = PG_DB) -> None:
        self.bindir = pg_bindir()
        self.prefix = _as_postgres_user()
        # Not under pytest's basetemp: that is mode 0700 for root, and the server may run as 'postgres'.
        self.base = Path(tempfile.mkdtemp(prefix="longrun-pg-"))
        self.data, self.sockets = self.base / "data", self.base / "sock"
        self.sockets.mkdir()
        if self.prefix:
            for p in (self.base, self.sockets):
                shutil.chown(p, "postgres", "postgres")
        self.port = free_port()
        self.db = db
        self.url = f"postgresql+asyncpg://{PG_USER}@127.0.0.1:{self.port}/{db}"
        self.log_path = log_dir / "postgres.log"
        self.proc: subprocess.Popen | None = None
        self.timings: dict[str, float] = {}

    def _bin(self, name: str) -> str:
        return str(self.bindir / name)

    def start(self, timeout: float = 60) -> Postgres:
        t0 = time.monotonic()
        subprocess.run(
            [*self.prefix, self._bin("initdb"), "-D", str(self.data), "-U", PG_USER, "--auth=trust", "-E", "UTF8"]
            + ["--no-locale", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        log = open(self.log_path, "ab")
        # Durability off: a test cluster lives for one session; migrations and commits go faster on a loaded machine.
        settings = ["fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=200"]
        self.proc = subprocess.Popen(
            [*self.prefix, self._bin("postgres"), "-D", str(self.data), "-h", "127.0.0.1", "-p", str(self.port)]
            + ["-k", str(self.sockets), *(a for s in settings for a in ("-c", s))],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while subprocess.run([self._bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("PostgreSQL did not start:\n" + self.log_path.read_text()[-3000:])
            time.sleep(0.2)
        self.psql(f'CREATE DATABASE "{self.db}"', db="postgres")
        self.timings["start_s"] = time.monotonic() - t0
        return self

    def psql(self, sql: str, db: str | None = None) -> str:
        """Run ``sql`` with ``psql`` over TCP; rows as ``a|b`` lines."""
        r = subprocess.run(
            [self._bin("psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port)]
            + ["-U", PG_USER, "-d", db or self.db, "-c", sql],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"psql failed ({r.returncode}): {r.stderr}")
        return r.stdout.strip()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(
                [*self.prefix, self._bin("pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30"],
                capture_output=True,
                timeout=60,
            )
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.base, ignore_errors=True)


# ---------------------------------------------------------------- Prefect on PostgreSQL


@contextmanager
def prefect_client(api_url: str) -> Iterator:
    """A sync Prefect client for the server at ``api_url`` (whatever the session's settings point at)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


class PgPrefectServer(PrefectServer):
    """``prefect server start`` with its database on ``postgres`` (``PREFECT_API_DATABASE_CONNECTION_URL``)."""

    def __init__(self, home: Path, postgres: Postgres) -> None:
        self.postgres = postgres
        super().__init__(home, database_url=postgres.url)

    def client(self):
        return prefect_client(self.url)

    def cli_env(self, **extra: str) -> dict[str, str]:
        """Environment for a ``longrun``/``prefect`` client subprocess talking to this server."""
        return {**os.environ, "PREFECT_API_URL": self.url, "PREFECT_HOME": str(self.home), **extra}


# ---------------------------------------------------------------- workers


def _proc_table() -> dict[int, tuple[int, int, int, str]]:
    """pid -> (ppid, pgid, sid, state) for every live process (``/proc``)."""
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        table[int(d)] = (int(fields[1]), int(fields[2]), int(fields[3]), fields[0])
    return table


def _tagged(pid: int, tag: bytes) -> bool:
    try:
        return tag in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


class Worker:
    """A ``prefect worker start --type process`` that stands for a machine of its own.

    It has its own working directory (``cwd``), ``HOME``, ``PREFECT_HOME``,
    ``LONGRUN_HOME`` and ``LONGRUN_WORKDIR`` (``workdir``: where it materialises
    job roots), polls every second, and logs to ``log_path``. The process worker starts
    each flow run in a new session (Prefect 3.9's ``EngineCommandStarter``
    with ``isolate_process_group``), so the worker's process group is not all
    of it: every process it starts inherits ``LONGRUN_TEST_PROC_TAG`` and
    ``pids()`` finds them by that, by descent and by session.
    """

    def __init__(self, name: str, pool: str, base: Path, api_url: str, env: dict[str, str] | None = None) -> None:
        self.name, self.pool, self.base = name, pool, base
        self.cwd, self.home, self.prefect_home, self.workdir = (base / d for d in ("cwd", "home", "prefect-home", "workdir"))
        for d in (self.cwd, self.home, self.prefect_home, self.workdir):
            d.mkdir(parents=True, exist_ok=True)
        self.tag = f"{TAG_VAR}={uuid.uuid4().hex}"
        self.env = {
            **os.environ,
            "HOME": str(self.home),
            "PREFECT_HOME": str(self.prefect_home),
            "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
            "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO",
            "LONGRUN_WORKDIR": str(self.workdir),
            "LONGRUN_HOME": str(self.home / "longrun-home"),
            **(env or {}),
            TAG_VAR: self.tag.split("=", 1)[1],
        }
        self.log_path = base / "worker.log"
        self.proc = start_worker_process(self.env, pool, name, self.log_path, cwd=self.cwd)
        self.pid = self.proc.pid

    def wait_registered(self, timeout: float = 90) -> Worker:
        with prefect_client(self.env["PREFECT_API_URL"]) as client:
            wait_worker_registered(client, self.pool, self.name, self.proc, self.log_path, timeout)
        return self

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ran(self, flow_run_id: str) -> bool:
        """Whether this worker ran the flow run: it submitted it, and the server did not abort that
        (every worker that polls may try to submit a run; all but one are told to abort)."""
        log = self.log()
        return f"submitting flow run '{flow_run_id}'" in log and f"Aborted submission of flow run '{flow_run_id}'" not in log

    def pids(self) -> set[int]:
        """Every live process of this worker: itself, its descendants, their sessions, and anything with its tag."""
        table = _proc_table()
        tag = self.tag.encode()
        mine = {self.pid} if self.pid in table else set()
        mine |= {pid for pid in table if _tagged(pid, tag)}
        own_groups = {os.getpgrp(), os.getsid(0)}
        while True:
            groups = {table[p][1] for p in mine} | {table[p][2] for p in mine}
            groups -= own_groups
            more = {p for p, (ppid, pgid, sid, _) in table.items() if ppid in mine or pgid in groups or sid in groups} - mine
            if not more:
                break
            mine |= more
        return {p for p in mine if table[p][3] != "Z" and p != os.getpid()}

    def stop(self, grace: float = 20) -> None:
        """SIGTERM the worker's process group and wait; what is left of it after ``grace`` (flow runs too) is killed."""
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.proc.wait(timeout=grace)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL the worker and every process it started (its flow runs and their children): a machine dies."""
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:  # freeze first, so nothing forks a new child between the scan and the kill
                _signal(pid, signal.SIGSTOP)
            for pid in pids:
                _signal(pid, signal.SIGKILL)
            time.sleep(0.1)
        else:
            raise AssertionError(f"processes of worker {self.name} survive SIGKILL: {self.pids()}")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def start_worker_process(env: dict[str, str], pool: str, name: str, log_path: Path, cwd: Path | None = None, prefetch: int = 5):
    """``prefect worker start --pool POOL --type process --name NAME``, in a new session, logging to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process", "--name", name]
            + ["--prefetch-seconds", str(prefetch)],
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_worker_registered(client, pool: str, name: str, proc: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    """Until the server lists worker ``name`` on ``pool`` (its first heartbeat); fails if the worker exits first."""
    deadline = time.monotonic() + timeout
    while not any(w.name == name for w in client.read_workers_for_work_pool(pool)):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"worker {name} did not come up:\n" + log_path.read_text()[-3000:])
        time.sleep(0.5)


def create_process_pool(client, pool: str) -> None:
    """A process work pool with the process worker's default job template (as ``prefect work-pool create --type process``)."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template), overwrite=True)


def delete_pool(client, pool: str) -> None:
    """Delete a work pool and the deployments on it."""
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
    from prefect.exceptions import ObjectNotFound

    for dep in client.read_deployments(work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])), limit=200):
        client.delete_deployment(dep.id)
    try:
        client.delete_work_pool(pool)
    except ObjectNotFound:
        pass


# ---------------------------------------------------------------- deployments and flow runs


def job_spec(tmp_path: Path, name: str, schedule: tuple[str, str] | None = None) -> Path:
    """The hello-loop example renamed (and with a schedule), with its workspace template, under tmp_path."""
    if not (tmp_path / "hello-loop").exists():
        shutil.copytree(EXAMPLES / "hello-loop", tmp_path / "hello-loop")
    text = re.sub(r"(?m)^name: hello-loop$", f"name: {name}", (EXAMPLES / "hello-loop.yaml").read_text())
    if schedule:
        text += f"schedule:\n  cron: '{schedule[0]}'\n  timezone: {schedule[1]}\n"
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def deploy_job(env: dict, spec: Path, *args: str) -> dict:
    """``longrun deploy SPEC ARGS --json``; its JSON document."""
    r = longrun_cli("deploy", str(spec), *args, "--json", cwd=spec.parent, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout)


def wait_final(client, flow_run_id, timeout: float, log: Path | None = None):
    """The flow run once its state is final; fails after ``timeout`` s with the tail of ``log``."""
    deadline = time.monotonic() + timeout
    while True:
        fr = client.read_flow_run(flow_run_id)
        if fr.state is not None and fr.state.is_final():
            return fr
        if time.monotonic() > deadline:
            tail = log.read_text()[-4000:] if log and log.exists() else ""
            pytest.fail(f"flow run {flow_run_id} still {fr.state.type if fr.state else None} after {timeout}s\n{tail}")
        time.sleep(0.5)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def postgres(tmp_path_factory) -> Iterator[Postgres]:
    """A PostgreSQL cluster for the session (``Postgres``: ``url``, ``port``, ``psql(sql)``, ``timings``)."""
    pg = Postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield pg.start()
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def pg_prefect_server(postgres, tmp_path_factory) -> Iterator[PgPrefectServer]:
    """``prefect server start`` on ``postgres``, for the session (``PgPrefectServer``: ``url``, ``env``, ``client()``)."""
    t0 = time.monotonic()
    server = PgPrefectServer(tmp_path_factory.mktemp("pg-prefect-home"), postgres)
    try:
        server.wait(timeout=240)  # migrating an empty database takes 30-80 s on a loaded 2-core machine
        server.timings = {"ready_s": time.monotonic() - t0}
        yield server
    finally:
        server.stop()


@pytest.fixture
def scaleout_pool(pg_prefect_server) -> Iterator[str]:
    """A fresh process work pool on ``pg_prefect_server``; it and its deployments are deleted afterwards."""
    pool = f"scaleout-{uuid.uuid4().hex[:8]}"
    with pg_prefect_server.client() as client:
        create_process_pool(client, pool)
    yield pool
    with pg_prefect_server.client() as client:
        delete_pool(client, pool)


@pytest.fixture
def scaleout_workers(pg_prefect_server, scaleout_pool, tmp_path_factory):
    """``start(name=None, *, env=None, pool=None, wait=True) -> Worker``: a process worker on ``pg_prefect_server``.

    ``env`` is added to the worker's environment (``AWS_ENDPOINT_URL``...);
    ``pool`` defaults to ``scaleout_pool``. At the end every worker started
    here is stopped and all its processes killed, whatever the test's outcome.
    """
    workers: list[Worker] = []

    def start(name: str | None = None, *, env: dict[str, str] | None = None, pool: str | None = None, wait: bool = True):
        name = name or f"machine-{len(workers) + 1}"
        base = tmp_path_factory.mktemp(f"worker-{name}")
        worker = Worker(name, pool or scaleout_pool, base, pg_prefect_server.url, env)
        workers.append(worker)
        return worker.wait_registered() if wait else worker

    yield start
    for worker in workers:
        worker.stop(grace=10)
    leaks = {w.name: w.pids() for w in workers if w.pids()}
    assert not leaks, f"worker processes left behind: {leaks}"


@pytest.fixture
def s3_fault_proxy(moto_server) -> Iterator[FaultProxy]:
    """A ``FaultProxy`` in front of the session's moto; give ``proxy.url`` to workers as ``AWS_ENDPOINT_URL``."""
    proxy = FaultProxy(moto_server)
    yield proxy
    proxy.close()
