"""An approval decided in a real browser, in the Prefect UI a user would open.

A job with two approval checkpoints runs as a ``longrun run`` subprocess with
no ``PREFECT_API_URL`` and an empty ``LONGRUN_HOME``, so the command starts the
local Prefect server (``longrun.flows.server``, UI on) and the run pauses
there. Headless Chromium (Debian's ``/usr/bin/chromium``, driven by the
``playwright`` Python package over CDP) answers both from the flow run page:

* ``before-work`` in the V1 UI, at the URL the approval prompt printed
  (``/runs/flow-run/<id>``): the **Resume** button opens the run-input form;
* ``release`` in the V2 UI (``/v2/runs/flow-run/<id>``, what ``/`` opens by
  default since Prefect 3.8): the run's ``Open menu`` → **Resume**.

The job must then complete with both approvers journaled, and the finished
run page must show the run Completed with its artifacts; a screenshot of it
is kept in ``tests/artifacts/ui-run-page.png``.

Skipped only when Chromium or the ``playwright`` package is missing (CI
installs both).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import api, stop_group, stop_local_server, wait_paused, write_job

from longrun.journal.local import Journal
from longrun.spec import load_spec
from longrun.storage.paths import JobPaths

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - CI installs it
    sync_playwright = None

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

pytestmark = [
    pytest.mark.prefect,
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (Debian package `chromium`)"),
    pytest.mark.skipif(sync_playwright is None, reason="the `playwright` Python package is missing (pip install playwright)"),
]

# No network on the test machines: without the background-networking flags
# Chromium keeps dialing Google services and fills the log with refusals.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Headless Chromium reports no pointer and no hover, and then the V1 UI renders
# its selects as native <select>s (a touch layout). A desktop user has a mouse;
# Playwright's own launcher passes the same setting.
DESKTOP_POINTER = "--blink-settings=primaryHoverType=2,availableHoverTypes=2,primaryPointerType=4,availablePointerTypes=4"

SPEC = """
name: {name}
goal: approve in the Prefect UI
workspace: {{path: ws, template: template}}
allowed_tools: [python]
model_policy: {{default: m}}
approvals:
  - {{before: work, timeout: 180, poll_interval: 1}}
  - {{after: gates, step: release, timeout: 180, poll_interval: 1}}
stages:
  - {{id: work, run: [python, -c, "open('ran.txt', 'a').write('x')"]}}
quality_gates:
  required:
    - {{id: made, kind: artifact_exists, path: ran.txt}}
"""

UI_TIMEOUT_MS = 30_000


# ------------------------------------------------------------------ processes


def _get(url: str, timeout: float = 2) -> tuple[int, str, str]:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"accept": "text/html"}), timeout=timeout) as r:
        return r.status, r.headers.get("content-type", ""), r.read().decode("utf-8", "replace")


def _post_json(url: str, body: dict) -> object:
    resp = api("POST", url, body)
    resp.raise_for_status()
    return resp.json()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's Chromium, started by us (so it is ended by its pid), driven over CDP."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    log = open(profile.parent / f"{profile.name}.log", "wb")
    proc = subprocess.Popen(
        [
            str(CHROMIUM),
            *CHROMIUM_FLAGS,
            DESKTOP_POINTER,
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1400,1000",
            "about:blank",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pw = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start:\n" + Path(log.name).read_text()[-3000:])
            time.sleep(0.1)
        cdp_port = int(port_file.read_text().split()[0])
        pw = sync_playwright().start()
        b = pw.chromium.connect_over_cdp(f"http://127.0.0.1:{cdp_port}", timeout=UI_TIMEOUT_MS)
        yield b
        b.close()
    finally:
        if pw is not None:
            pw.stop()
        stop_group(proc, grace=10)
        log.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(UI_TIMEOUT_MS)
    expect.set_options(timeout=UI_TIMEOUT_MS)
    p = context.new_page()
    p.page_errors = []  # uncaught exceptions in the UI, shown when a step fails
    p.on("pageerror", lambda exc: p.page_errors.append(str(exc)))
    yield p
    context.close()


# ------------------------------------------------------------------ helpers


def _shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def _v1_field(dialog, label: str):
    """A V1 form field by its label text (V1's <label for> does not point at the input)."""
    return dialog.locator(".schema-form-property").filter(has=dialog.page.get_by_text(re.compile(f"^{re.escape(label)}")))


def approve_in_v1(page, base: str, flow_run_id: str, job_id: str, approver: str, comment: str) -> None:
    page.goto(f"{base}/runs/flow-run/{flow_run_id}")
    expect(page.get_by_text("Paused", exact=True).first).to_be_visible()
    page.get_by_role("button", name="Resume").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Resume Flow Run")).to_be_visible()
    # Our description (the approvals.describe markdown) is rendered above the form.
    expect(dialog.get_by_role("heading", name=re.compile(r"Approve before-work .* iteration 1"))).to_be_visible()
    expect(dialog.get_by_text(job_id).first).to_be_visible()
    # The decision select opens from the keyboard (a mouse click does not open V1's PSelect here).
    decision = _v1_field(dialog, "Decision").get_by_role("button", name="approve")
    decision.focus()
    page.keyboard.press("ArrowDown")
    page.get_by_role("option", name="approve", exact=True).click()
    expect(page.get_by_role("option")).to_have_count(0)
    expect(decision).to_have_text("approve")
    _v1_field(dialog, "Approver").get_by_role("textbox").fill(approver)
    _v1_field(dialog, "Comment").get_by_role("textbox").fill(comment)
    _shot(page, "ui-resume-form-v1.png")
    dialog.get_by_role("button", name="Submit").click()
    # (V1 mounts its toast container twice, so the toast text is there twice.)
    expect(page.get_by_text("Flow run resumed").first).to_be_visible()
    expect(page.get_by_role("dialog")).to_have_count(0)


def approve_in_v2(page, base: str, flow_run_id: str, job_id: str, approver: str, comment: str) -> None:
    page.goto(f"{base}/v2/runs/flow-run/{flow_run_id}")
    expect(page.get_by_text("Paused", exact=True).first).to_be_visible()
    # V2 has no Resume button on the page: it is in the run's action menu.
    page.get_by_role("button", name="Open menu").click()
    page.get_by_role("menuitem", name="Resume").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("heading", name="Resume Flow Run")).to_be_visible()
    expect(dialog.get_by_role("heading", name=re.compile(r"Approve release .* iteration 1"))).to_be_visible()
    # The release description carries the gate table.
    expect(dialog.get_by_role("cell", name="made", exact=True)).to_be_visible()
    expect(dialog.get_by_role("cell", name="PASS", exact=True)).to_be_visible()
    dialog.get_by_role("button", name="Select Decision").click()
    page.get_by_role("option", name="approve", exact=True).click()
    expect(dialog.get_by_role("button", name="Select Decision")).to_have_text("approve")
    dialog.get_by_label("Approver", exact=True).fill(approver)
    dialog.get_by_label(re.compile(r"^Comment")).fill(comment)
    _shot(page, "ui-resume-form-v2.png")
    dialog.get_by_role("button", name="Resume", exact=True).click()
    expect(page.get_by_role("dialog")).to_have_count(0)


# ------------------------------------------------------------------ the test


@pytest.fixture
def local_home(tmp_path):
    """An empty LONGRUN_HOME; the local server ``longrun run`` starts in it is stopped (by its pid) at teardown."""
    home = tmp_path / "longrun-home"
    yield home
    stop_local_server(home)


def test_approve_in_the_ui_of_the_local_server_and_see_the_completed_run(local_home, page, background, tmp_path):
    spec = write_job(tmp_path, SPEC.format(name="ui-approval"))
    job_id = load_spec(spec).job_id
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"LONGRUN_HOME": str(local_home), "PREFECT_HOME": str(tmp_path / "prefect-home")}
    proc = background(tmp_path, env, "run", str(spec))
    journal = Journal(JobPaths(tmp_path, job_id).events_file)

    step = "start"
    try:
        step = "before-work (V1 UI)"
        # A first start migrates a new database: allow for it on a loaded machine.
        req = wait_paused(journal, "before-work", proc, deadline_s=300).payload.model_dump()
        server = json.loads((local_home / "server.json").read_text())
        base, api = server["ui_url"], server["api_url"]
        assert req["api_url"] == api and base.startswith("http://127.0.0.1:")
        status, ctype, body = _get(f"{base}/")
        assert status == 200 and "text/html" in ctype and "<html" in body.lower()  # the server serves its UI
        flow_run_id = req["flow_run_id"]
        assert not (tmp_path / "ws" / "ran.txt").exists()  # nothing ran before the approval
        approve_in_v1(page, base, flow_run_id, job_id, "ui-alice", "looks good in v1")

        step = "release (V2 UI)"
        req = wait_paused(journal, "release", proc, deadline_s=60).payload.model_dump()
        assert req["flow_run_id"] == flow_run_id  # one flow run, paused twice
        approve_in_v2(page, base, flow_run_id, job_id, "ui-bob", "ship it from v2")

        step = "run completion"
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert json.loads(out)["status"] == "COMPLETED"
        # The prompt named the server's UI and the paused run's page in it (where the approval was given).
        assert f"Prefect UI: {base}" in err.splitlines()
        assert f"approve in the Prefect UI ({base}/runs/flow-run/{flow_run_id})" in err
        events = journal.read()
        decided = [
            (e.type, e.payload.step, e.payload.approver, e.payload.comment) for e in events if e.type in ("approved", "rejected")
        ]
        assert decided == [
            ("approved", "before-work", "ui-alice", "looks good in v1"),
            ("approved", "release", "ui-bob", "ship it from v2"),
        ]
        types = [e.type for e in events]
        last_approved = max(i for i, t in enumerate(types) if t == "approved")
        assert "run_completed" in types[last_approved:], types
        assert (tmp_path / "ws" / "ran.txt").read_text() == "x"

        step = "completed run page"
        page.goto(f"{base}/runs/flow-run/{flow_run_id}")
        expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
        page.get_by_text("Artifacts", exact=True).click()
        expect(page).to_have_url(re.compile(r"tab=Artifacts"))
        for key in (f"evidence-{job_id}", f"evidence-{job_id}-manifest", "ui-approval-summary", "ui-approval-gates"):
            expect(page.get_by_text(key, exact=True)).to_be_visible()
        shot = _shot(page, "ui-run-page.png")
        assert shot.stat().st_size > 10_000

        page.goto(f"{base}/v2/runs/flow-run/{flow_run_id}?tab=Artifacts")
        expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
        expect(page.get_by_text(f"evidence-{job_id}", exact=True)).to_be_visible()
        _shot(page, "ui-run-page-v2.png")
    except BaseException:
        try:
            _shot(page, "ui-failure.png")
        except Exception:
            pass
        if page.page_errors:
            print(f"UI errors while at {step}:", *page.page_errors, sep="\n  ")
        raise

    # The same artifacts through the REST API (explicit limit/offset/sort: no nulls).
    artifacts = _post_json(
        f"{api}/artifacts/filter",
        {
            "artifacts": {"flow_run_id": {"any_": [flow_run_id]}},
            "limit": 50,
            "offset": 0,
            "sort": "CREATED_DESC",
        },
    )
    by_key = {a["key"]: a for a in artifacts if a["key"]}
    assert by_key["ui-approval-summary"]["type"] == "markdown"
    assert by_key["ui-approval-gates"]["type"] == "table"
    assert json.loads(by_key["ui-approval-gates"]["data"])[0] | {"detail": ""} == {
        "iteration": 1,
        "gate": "made",
        "kind": "artifact_exists",
        "required": True,
        "result": "PASS",
        "detail": "",
    }
    # Prefect stores a link artifact as markdown `[text](link)`.
    link = by_key[f"evidence-{job_id}"]
    assert link["type"] == "markdown"
    assert re.fullmatch(rf"\[ui-approval evidence bundle\]\(file://.*/{job_id}\.tar\.gz\)", link["data"]), link["data"]
    assert by_key[f"evidence-{job_id}-manifest"]["type"] == "markdown"
    assert any(a["type"] == "progress" for a in artifacts)
