"""The tighter rules of issue 12: globs, no-follow reads and writes, spec fields, the sandbox preflight."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from longrun import atomicio
from longrun.errors import LongrunError, PathEscape, SpecError
from longrun.execution.gates import glob_match
from longrun.execution.junit import parse_junit
from longrun.spec.loader import parse_spec_text
from longrun.storage.paths import open_nofollow, read_nofollow

HEAD = "name: r\ngoal: g\nallowed_tools: [python, sh]\nmodel_policy: {default: m}\n"


@pytest.mark.parametrize(
    ("path", "pattern", "matches"),
    [
        ("a.py", "*.py", True),
        ("src/a.py", "*.py", False),  # * does not cross /
        ("src/a.py", "src/*.py", True),
        ("src/x/a.py", "src/*.py", False),
        ("src/a.py", "src/**/*.py", True),  # ** is any depth, none included
        ("src/x/y/a.py", "src/**/*.py", True),
        ("docs/a/b/c.md", "docs/**", True),
        ("x/y.py", "**/*.py", True),
        ("a/b", "a?b", False),  # ? does not match /
        ("a1", "a[0-9]", True),
        ("a/b", "a[!x]b", False),
    ],
)
def test_file_changed_globs_match_by_path_segment(path, pattern, matches):
    assert glob_match(path, pattern) is matches


def test_a_symlinked_junit_report_is_refused_not_followed(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    secret = tmp_path / "secret.xml"
    secret.write_text('<testsuite tests="1"><testcase name="t"/></testsuite>')
    (ws / "report.xml").symlink_to(secret)
    with pytest.raises(LongrunError) as err:
        parse_junit(ws / "report.xml", base=ws)
    assert err.value.code == "junit_invalid" and "symlink" in err.value.message


def test_a_directory_swapped_for_a_symlink_below_the_base_is_refused(tmp_path):
    ws, elsewhere = tmp_path / "ws", tmp_path / "elsewhere"
    ws.mkdir()
    elsewhere.mkdir()
    (elsewhere / "r.xml").write_text("x")
    (ws / "reports").symlink_to(elsewhere)
    with pytest.raises(PathEscape):
        read_nofollow(ws / "reports" / "r.xml", base=ws)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "report.xml"
    os.mkfifo(fifo)
    done = threading.Event()

    def read() -> None:
        with pytest.raises(PathEscape):
            open_nofollow(fifo, base=tmp_path)
        done.set()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(5)
    assert done.is_set(), "opening a FIFO blocked"


def test_command_log_appends_refuse_a_symlink(tmp_path):
    target = tmp_path / "target"
    (tmp_path / "command.log").symlink_to(target)
    with pytest.raises(PathEscape):
        atomicio.open_append(tmp_path / "command.log")
    with pytest.raises(PathEscape):
        atomicio.append_line(tmp_path / "command.log", b"x\n")
    assert not target.exists()


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_spec_text(text)
    return [f"{p.path}: {p.message}" for p in err.value.problems]


def test_env_names_values_and_passthrough_are_checked_at_validate():
    found = problems(
        HEAD
        + "stages:\n"
        + "  - {id: a, run: [python], env: {'A=B': x}}\n"
        + "  - {id: b, run: [python], env: {'X': \"a\\0b\"}}\n"
        + "  - {id: c, run: [python], env_passthrough: ['BAD NAME']}\n"
    )
    assert any(p.startswith("stages[0].env:") and "'A=B'" in p for p in found), found
    assert any(p.startswith("stages[1].env:") and "NUL" in p for p in found), found
    assert any(p.startswith("stages[2].env_passthrough[0]") for p in found), found


def test_shell_needs_allow_shell():
    spec = HEAD + "stages: [{id: a, run: [sh, 'echo hi'], shell: true}]\n"
    assert problems(spec) == ["stages[0].shell: " + problems(spec)[0].split(": ", 1)[1]]
    assert "allow_shell" in problems(spec)[0]
    assert parse_spec_text(spec + "allow_shell: true\n").allow_shell is True


def test_sandbox_spellings():
    assert parse_spec_text(HEAD + "stages: [{id: a, run: [python]}]\n").sandbox.network is True
    assert parse_spec_text(HEAD + "stages: [{id: a, run: [python]}]\nsandbox: {network: false}\n").sandbox.network is False
    assert parse_spec_text(HEAD + "stages: [{id: a, run: [python]}]\nsandbox: none\n").sandbox == "none"
    assert problems(HEAD + "stages: [{id: a, run: [python]}]\nsandbox: off\n")


@pytest.mark.parametrize(
    ("cron", "tz"),
    [
        ("61 * * * *", "UTC"),
        ("0 9 * * 8", "UTC"),
        ("H 2 * * *", "UTC"),
        ("0 2 * * *", "UTC+3"),
        ("0 2 * * *", "EST+5EDT,M3.2.0/2,M11.1.0/2"),
    ],
)
def test_schedules_prefect_would_refuse_are_refused_at_validate(cron, tz):
    assert problems(HEAD + f"stages: [{{id: a, run: [python]}}]\nschedule: {{cron: '{cron}', timezone: '{tz}'}}\n")


def test_run_without_bwrap_fails_up_front_with_sandbox_unavailable(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(HEAD + "stages: [{id: a, run: [python, -c, pass]}]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PATH"] = str(tmp_path / "empty-bin")  # no bwrap (and no git) on PATH
    r = subprocess.run(
        [sys.executable, "-m", "longrun.cli.main", "run", str(spec), "--root", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    err = json.loads(r.stdout)["error"]
    assert err["code"] == "sandbox_unavailable"
    assert "bubblewrap" in err["message"] and "sandbox: none" in err["message"]
    assert not (tmp_path / ".maestro" / "jobs").exists()  # nothing was registered
