"""run_command under a real bubblewrap sandbox: what a command can see, write and leave behind."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from longrun.errors import LongrunError
from longrun.execution.environment import stage_environment
from longrun.execution.process import run_command
from longrun.execution.sandbox import SandboxPlan, bwrap_argv, check_bwrap

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")


@pytest.fixture
def layout(tmp_path) -> dict[str, Path]:
    root = tmp_path / "root"
    ws = root / "ws"
    ws.mkdir(parents=True)
    maestro = root / ".maestro"
    (maestro / "jobs").mkdir(parents=True)
    (maestro / "jobs" / "events.jsonl").write_text("journal\n")
    it_dir = maestro / "checkpoints" / "1"
    (it_dir / "usage").mkdir(parents=True)
    (it_dir / "summary.md").write_text("previous summary\n")
    return {"root": root, "ws": ws, "maestro": maestro, "it": it_dir, "usage": it_dir / "usage", "log": tmp_path / "cmd.log"}


def plan(layout: dict[str, Path], *, network: bool = True, ws: Path | None = None) -> SandboxPlan:
    return SandboxPlan(
        writable=(ws or layout["ws"], layout["usage"]),
        hidden=(layout["maestro"],),
        read_only=(layout["it"],),
        network=network,
        bwrap=check_bwrap(),
    )


def sh(layout, script: str, **kw) -> tuple[int | None, str]:
    env = {"PATH": os.environ["PATH"], **kw.pop("env", {})}
    res = run_command(
        ["sh", script], cwd=layout["ws"], env=env, timeout=kw.pop("timeout", 20), log_path=layout["log"], shell=True, **kw
    )
    out = layout["log"].read_bytes()[res.log_offset_start : res.log_offset_end].decode()
    layout["log"].unlink()
    return res.exit_code, out


def test_workspace_and_usage_are_writable_the_rest_is_read_only(layout):
    code, out = sh(
        layout,
        f"echo a > {layout['ws']}/f && echo u > {layout['usage']}/s.json && echo ok;"
        f"(echo x > {layout['root']}/outside) 2>/dev/null || echo refused-root;"
        f"(echo x > {layout['it']}/summary.md) 2>/dev/null || echo refused-checkpoint;"
        f"cat {layout['it']}/summary.md",
        sandbox=plan(layout),
    )
    assert code == 0, out
    assert out.splitlines() == ["ok", "refused-root", "refused-checkpoint", "previous summary"]
    assert (layout["ws"] / "f").read_text() == "a\n"
    assert not (layout["root"] / "outside").exists()
    assert (layout["it"] / "summary.md").read_text() == "previous summary\n"


def test_maestro_is_hidden_even_when_the_workspace_is_the_job_root(layout):
    script = f"ls -A {layout['maestro']}; cat {layout['maestro']}/jobs/events.jsonl 2>/dev/null || echo no-journal"
    code, out = sh(layout, script, sandbox=plan(layout, ws=layout["root"]))
    assert code == 0, out
    assert "jobs" not in out.split() and "no-journal" in out
    assert "checkpoints" in out  # only the path down to the readable checkpoint directory exists


def test_a_timeout_kills_every_process_in_the_sandbox(layout):
    mark = uuid.uuid4().hex
    env = {"SANDBOX_TEST_MARK": mark}
    code, _ = sh(layout, "sleep 300 & sleep 300 & sleep 300", sandbox=plan(layout), timeout=1.0, env=env, kill_grace=0.5)
    assert code is None
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if f"SANDBOX_TEST_MARK={mark}".encode() in Path(f"/proc/{pid}/environ").read_bytes():
                left.append(pid)
        except OSError:
            continue
    assert left == []


def test_network_false_leaves_only_loopback(layout):
    _, with_net = sh(layout, "cat /proc/net/dev", sandbox=plan(layout))
    code, without = sh(layout, "cat /proc/net/dev", sandbox=plan(layout, network=False))
    assert code == 0
    ifaces = [line.split(":")[0].strip() for line in without.splitlines() if ":" in line]
    assert ifaces == ["lo"]
    assert len([line for line in with_net.splitlines() if ":" in line]) >= len(ifaces)
    assert "--unshare-net" in bwrap_argv(["true"], plan(layout, network=False))


def test_a_missing_program_is_127_before_the_sandbox_starts(layout):
    res = run_command(
        ["no-such-program-xyz"],
        cwd=layout["ws"],
        env={"PATH": "/usr/bin:/bin"},
        timeout=5,
        log_path=layout["log"],
        sandbox=plan(layout),
    )
    assert res.exit_code == 127 and "executable not found" in (res.error or "")


def test_a_root_stage_cannot_unmount_the_cover(layout):
    code, out = sh(
        layout,
        f"umount {layout['maestro']} 2>/dev/null; ls -A {layout['maestro']}/jobs 2>/dev/null || echo hidden",
        sandbox=plan(layout),
    )
    assert "hidden" in out and "events.jsonl" not in out


def test_missing_bwrap_is_sandbox_unavailable_naming_the_package_and_the_opt_out(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(LongrunError) as err:
        check_bwrap()
    assert err.value.code == "sandbox_unavailable"
    assert "bubblewrap" in err.value.message and "sandbox: none" in err.value.message


def test_stage_environment_is_an_allowlist():
    source = {
        "PATH": "/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "UTC",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "PREFECT_API_KEY": "pk",
        "ANTHROPIC_API_KEY": "ak",
        "PRESET_KEY": "pr",
        "HOME": "/root",
        "LONGRUN_ROOT": "/r",
    }
    env = stage_environment({"MINE": "1"}, ["ANTHROPIC_API_KEY", "ABSENT"], ["PRESET_KEY"], home="/h", tmpdir="/t", source=source)
    assert env == {
        "PATH": "/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "UTC",
        "ANTHROPIC_API_KEY": "ak",
        "PRESET_KEY": "pr",
        "HOME": "/h",
        "TMPDIR": "/t",
        "LONGRUN_ROOT": "/r",
        "MINE": "1",
    }
