"""run_command, kill_stale_group, scan_log and read_usage_file with real subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longrun.errors import LongrunError
from longrun.execution.process import (
    CommandResult,
    Usage,
    build_argv,
    kill_stale_group,
    read_usage_file,
    run_command,
    scan_log,
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}


def run(argv, tmp_path: Path, **kw) -> CommandResult:
    kw.setdefault("cwd", tmp_path)
    kw.setdefault("env", ENV)
    kw.setdefault("timeout", 30)
    kw.setdefault("log_path", tmp_path / "logs" / "stage.log")
    return run_command(argv, **kw)


def segment(log: Path, res: CommandResult) -> bytes:
    return log.read_bytes()[res.log_offset_start : res.log_offset_end]


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (zombies may linger unreaped under PID 1)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# --- run_command ------------------------------------------------------------


def test_success_writes_header_output_footer_and_offsets(tmp_path):
    log = tmp_path / "logs" / "stage.log"
    res = run(["sh", "-c", "echo out; echo err >&2"], tmp_path, header="iter 1 / build")
    assert res.exit_code == 0 and res.ok and not res.timed_out and res.error is None
    text = log.read_text()
    lines = text.splitlines()
    assert lines[0] == "=== iter 1 / build $ sh -c 'echo out; echo err >&2' ==="
    assert sorted(segment(log, res).decode().splitlines()) == ["err", "out"]
    assert re.fullmatch(r"=== exit 0 in \d+\.\d\ds ===", lines[-1])
    assert res.log_offset_end <= len(log.read_bytes())


def test_log_is_appended_and_offsets_point_at_each_command(tmp_path):
    log = tmp_path / "logs" / "stage.log"
    first = run(["echo", "first"], tmp_path)
    second = run(["printf", "no-newline"], tmp_path)
    assert segment(log, first) == b"first\n"
    assert segment(log, second) == b"no-newline"
    assert second.log_offset_start > first.log_offset_end
    assert log.read_text().splitlines()[-1].startswith("=== exit 0")  # footer on its own line


def test_nonzero_exit_code(tmp_path):
    res = run(["sh", "-c", "exit 3"], tmp_path)
    assert res.exit_code == 3 and not res.ok and not res.timed_out


def test_env_is_passed_exactly(tmp_path):
    log = tmp_path / "logs" / "stage.log"
    res = run(["sh", "-c", 'echo "$LONGRUN_X|${HOME-unset}"'], tmp_path, env={**ENV, "LONGRUN_X": "42"})
    assert res.exit_code == 0
    assert segment(log, res) == b"42|unset\n"


def test_cwd_is_honoured(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    log = tmp_path / "logs" / "stage.log"
    res = run(["pwd"], tmp_path, cwd=work)
    assert segment(log, res).decode().strip() == str(work)


def test_stdin_is_devnull(tmp_path):
    res = run(["cat"], tmp_path, timeout=5)  # would hang if stdin were inherited
    assert res.exit_code == 0 and segment(tmp_path / "logs" / "stage.log", res) == b""


def test_missing_executable_gives_127_in_log(tmp_path):
    log = tmp_path / "logs" / "stage.log"
    res = run(["no-such-tool-xyz", "--flag"], tmp_path)
    assert res.exit_code == 127 and not res.timed_out
    assert res.error == "executable not found: no-such-tool-xyz"
    assert b"executable not found: no-such-tool-xyz" in segment(log, res)
    assert "=== exit 127" in log.read_text()


def test_unexecutable_file_gives_126(tmp_path):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    res = run([str(script)], tmp_path)
    assert res.exit_code == 126 and res.error.startswith("permission denied")


def test_missing_cwd_is_reported_not_raised(tmp_path):
    res = run(["true"], tmp_path, cwd=tmp_path / "gone")
    assert res.exit_code is None and "working directory not found" in res.error


def test_streams_20mb_without_loss(tmp_path):
    log = tmp_path / "logs" / "stage.log"
    code = (
        "import sys\nline = b'x' * 99 + b'\\n'\nfor _ in range(200_000): sys.stdout.buffer.write(line)\nprint('USAGE tokens=77')"
    )
    res = run([sys.executable, "-c", code], tmp_path, env={**ENV, "PYTHONUNBUFFERED": "1"})
    assert res.exit_code == 0
    assert res.log_offset_end - res.log_offset_start == 20_000_000 + len("USAGE tokens=77\n")
    pattern = re.compile(r"USAGE tokens=(\d+)")
    assert scan_log(log, res.log_offset_start, res.log_offset_end, pattern) == "77"


def test_timeout_kills_whole_group_including_grandchild(tmp_path):
    pids = tmp_path / "pids"
    script = f"sleep 100 & echo $! > {pids}; echo $$ >> {pids}; sleep 100"
    started = time.monotonic()
    res = run(["sh", script], tmp_path, shell=True, timeout=0.5, kill_grace=1.0)
    elapsed = time.monotonic() - started
    assert res.timed_out and res.exit_code is None and res.error == "timed out after 0.5s"
    assert elapsed < 5
    grandchild, leader = (int(x) for x in pids.read_text().split())
    assert wait_for(lambda: not alive(grandchild) and not alive(leader), 2.0)
    assert "timed out after 0.5s; process group killed" in (tmp_path / "logs" / "stage.log").read_text()


def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path):
    pids = tmp_path / "pids"
    script = f"trap '' TERM; sh -c 'trap \"\" TERM; sleep 100' & echo $! > {pids}; sleep 100"
    started = time.monotonic()
    res = run(["sh", script], tmp_path, shell=True, timeout=0.3, kill_grace=0.5)
    assert res.timed_out
    assert 0.8 <= time.monotonic() - started < 5  # waited out the grace before SIGKILL
    assert wait_for(lambda: not alive(int(pids.read_text())), 2.0)


def test_leftover_background_process_is_killed_after_normal_exit(tmp_path):
    pids = tmp_path / "pids"
    res = run(["sh", f"sleep 100 & echo $! > {pids}"], tmp_path, shell=True, kill_grace=1.0)
    assert res.exit_code == 0 and not res.timed_out
    assert wait_for(lambda: not alive(int(pids.read_text())), 2.0)


def test_pid_file_holds_pgid_while_running_and_is_removed(tmp_path):
    pid_file = tmp_path / "run" / "stage.pid"
    seen = tmp_path / "seen"
    script = f'while [ ! -s {pid_file} ]; do sleep 0.01; done; cat {pid_file} > {seen}; echo "$$" >> {seen}'
    res = run(["sh", script], tmp_path, shell=True, pid_file=pid_file, timeout=10)  # written just after spawn
    assert res.exit_code == 0
    recorded, own_pid = seen.read_text().split()
    assert recorded == own_pid  # the child leads its own group: pgid == pid
    assert not pid_file.exists()


def test_build_argv_shell_rules():
    assert build_argv(["echo", "a b"]) == ["echo", "a b"]
    assert build_argv(["sh", "echo $0 $1", "zero", "one"], shell=True) == ["/bin/sh", "-c", "echo $0 $1", "zero", "one"]
    assert build_argv(["bash", "echo hi"], shell=True) == ["bash", "-c", "echo hi"]
    # Any other argv is joined quoted: each element stays one word, never shell syntax.
    assert build_argv(["echo hi", "&&", "true"], shell=True) == ["/bin/sh", "-c", "'echo hi' '&&' true"]
    assert build_argv(["echo", "a; touch x"], shell=True) == ["/bin/sh", "-c", "echo 'a; touch x'"]
    with pytest.raises(ValueError):
        build_argv(["sh"], shell=True)
    with pytest.raises(ValueError):
        build_argv([])


def test_shell_true_runs_script_with_positional_args(tmp_path):
    res = run(["sh", 'echo "$0-$1" && echo piped | tr a-z A-Z', "zero", "one"], tmp_path, shell=True)
    assert segment(tmp_path / "logs" / "stage.log", res) == b"zero-one\nPIPED\n"


# --- kill_stale_group -------------------------------------------------------


@pytest.fixture
def orphan(tmp_path):
    """A live process group, as a stage left behind by a SIGKILLed engine would be."""
    procs = []

    def start(env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(["sh", "-c", "sleep 100 & sleep 100"], env=env, start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def test_kill_stale_group_kills_matching_group(tmp_path, orphan):
    proc = orphan({**ENV, "LONGRUN_RUN": "job-1/run-7", "OTHER": "x"})
    pid_file = tmp_path / "stage.pid"
    pid_file.write_text(f"{proc.pid}\n")
    assert wait_for(lambda: b"LONGRUN_RUN" in Path(f"/proc/{proc.pid}/environ").read_bytes())
    assert kill_stale_group(pid_file, match_env={"LONGRUN_RUN": "job-1/run-7"}) is True
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert not pid_file.exists()


def test_kill_stale_group_refuses_group_with_other_environment(tmp_path, orphan):
    proc = orphan({**ENV, "LONGRUN_RUN": "someone-else"})
    pid_file = tmp_path / "stage.pid"
    pid_file.write_text(f"{proc.pid}\n")
    assert kill_stale_group(pid_file, match_env={"LONGRUN_RUN": "job-1/run-7"}) is False
    assert proc.poll() is None and alive(proc.pid)
    assert not pid_file.exists()


def test_kill_stale_group_handles_missing_dead_and_garbage_pid_files(tmp_path):
    pid_file = tmp_path / "stage.pid"
    assert kill_stale_group(pid_file, match_env={"A": "1"}) is False
    dead = subprocess.Popen(["true"])
    dead.wait()
    for text in (f"{dead.pid}\n", "not-a-pid", "", f"{os.getpgrp()}"):
        pid_file.write_text(text)
        assert kill_stale_group(pid_file, match_env={"PATH": ENV["PATH"]}) is False
        assert not pid_file.exists()
    with pytest.raises(ValueError):
        kill_stale_group(pid_file, match_env={})


def test_kill_stale_group_after_run_command_was_abandoned(tmp_path):
    """End to end: an engine is SIGKILLed mid-stage; the resumed engine cleans up."""
    pid_file = tmp_path / "stage.pid"
    engine = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from longrun.execution.process import run_command;"
            "run_command(['sleep', '100'], cwd=Path('.'), env={'PATH': sys.argv[1], 'LONGRUN_RUN': 'r1'},"
            " timeout=100, log_path=Path(sys.argv[2]), pid_file=Path(sys.argv[3]))",
            ENV["PATH"],
            str(tmp_path / "stage.log"),
            str(pid_file),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert wait_for(lambda: pid_file.exists(), 10)
        stage = int(pid_file.read_text())
        engine.kill()
        engine.wait()
        assert alive(stage)  # the orphan survives its engine
        assert kill_stale_group(pid_file, match_env={"LONGRUN_RUN": "r1"}) is True
        assert wait_for(lambda: not alive(stage), 2.0)
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()


# --- scan_log ---------------------------------------------------------------


def test_scan_log_returns_last_match_within_segment(tmp_path):
    log = tmp_path / "x.log"
    head = b"cost=$9.99\n"
    body = b"noise\ncost=$0.10\nmore noise\ncost=$0.25 then cost=$0.30\n"
    log.write_bytes(head + body + b"cost=$5.00\n")
    pattern = re.compile(r"cost=\$([0-9.]+)")
    assert scan_log(log, len(head), len(head) + len(body), pattern) == "0.30"
    assert scan_log(log, 0, len(head), pattern) == "9.99"
    assert scan_log(log, len(head), len(head) + 6, pattern) is None
    assert scan_log(log, 0, log.stat().st_size, re.compile(r"cost=\$5")) == "cost=$5"


def test_scan_log_tolerates_invalid_utf8(tmp_path):
    log = tmp_path / "x.log"
    log.write_bytes(b"\xff\xfe garbage\ntokens: 12\n")
    assert scan_log(log, 0, log.stat().st_size, re.compile(r"tokens: (\d+)")) == "12"


# --- read_usage_file --------------------------------------------------------


def test_usage_missing_file_is_zero(tmp_path):
    assert read_usage_file(tmp_path / "usage.json") == Usage(0.0, 0, None)


def test_usage_good_file(tmp_path):
    path = tmp_path / "usage.json"
    path.write_text(json.dumps({"usd": 0.125, "tokens": 1500, "model": "claude-x", "extra": [1]}))
    assert read_usage_file(path) == Usage(usd=0.125, tokens=1500, model="claude-x")
    path.write_text(json.dumps({"usd": 2, "tokens": 10.0}))
    assert read_usage_file(path) == Usage(usd=2.0, tokens=10, model=None)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{not json",
        "[1, 2]",
        '{"usd": -0.01}',
        '{"usd": "1.0"}',
        '{"usd": true}',
        '{"usd": NaN}',
        '{"usd": Infinity}',
        '{"tokens": -5}',
        '{"tokens": 1.5}',
        '{"tokens": "10"}',
        '{"model": 7}',
    ],
)
def test_usage_invalid_file_raises(tmp_path, content):
    path = tmp_path / "usage.json"
    path.write_text(content)
    with pytest.raises(LongrunError) as info:
        read_usage_file(path)
    assert info.value.code == "usage_invalid"
    assert str(path) in info.value.message
