"""Job spec v1: examples, schema drift, deterministic ids, and every spec error at once.

No Prefect here: the spec layer is pure core.

Broken specs are built by taking a small valid spec (``BASE``), setting one value
at a JSON path and checking that the loader reports exactly the expected paths —
usually the very path that was set.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from longrun.errors import JobNotFound, Problem, SpecError
from longrun.spec import schema as schema_mod
from longrun.spec.loader import canonical_json, identity_json, job_id_for, load_spec, parse_spec_text

REPO = Path(__file__).resolve().parents[2]
JOBSPECS = REPO / "jobspecs"
SCHEMA_PATH = JOBSPECS / "job.schema.json"
EXAMPLES = sorted((JOBSPECS / "examples").glob("*.yaml"))

BASE = """\
name: base-job
goal: Make the tests pass.
scope_paths: [src, PLAN.md]
allowed_tools: [python, git]
model_policy:
  default: small-fast
  execute: large-careful
stages:
  - id: plan
    run: [python, agent.py, plan]
  - id: execute
    run: [python, agent.py, execute]
    timeout: 60
quality_gates:
  required:
    - id: tests
      kind: test_pass
      run: [python, -m, pytest, "--junitxml={junit_xml}"]
approvals:
  - before: plan
stop_conditions:
  max_iterations: 5
"""


def base() -> dict[str, Any]:
    return yaml.safe_load(BASE)


DELETE = object()


def set_path(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Return a copy of ``data`` with ``value`` at ``path`` (the loader's syntax: ``stages[0].run[1]``).

    ``value=DELETE`` removes the key instead.
    """
    out = copy.deepcopy(data)
    parts: list[str | int] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        parts.append(int(index) if index else name)
    node: Any = out
    for part in parts[:-1]:
        node = node[part]
    if value is DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return out


def problems(data: dict[str, Any] | str) -> list[Problem]:
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    with pytest.raises(SpecError) as info:
        parse_spec_text(text, file="job.yaml")
    assert info.value.code == "job_invalid_spec"
    assert info.value.problems, "a SpecError always lists its problems"
    return info.value.problems


def paths(data: dict[str, Any] | str) -> list[str]:
    return sorted(p.path for p in problems(data))


def reorder(value: Any) -> Any:
    """The same document with every mapping's keys in reverse order."""
    if isinstance(value, dict):
        return {k: reorder(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reorder(v) for v in value]
    return value


# --------------------------------------------------------------------------- examples


def test_examples_are_present():
    names = {p.stem for p in EXAMPLES}
    assert {"fix-failing-test", "hello-loop"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_loads(path: Path):
    loaded = load_spec(path)
    assert loaded.spec.name == path.stem, "an example's name matches its file name"
    assert loaded.source == path.resolve()
    assert re.fullmatch(r"[0-9a-f]{12}", loaded.job_id)
    template = loaded.spec.workspace.template
    if template is not None:
        assert (loaded.base_dir / template).is_dir(), f"workspace template {template!r} is missing"


def test_fix_failing_test_example_shape():
    spec = load_spec(JOBSPECS / "examples" / "fix-failing-test.yaml").spec
    assert [s.id for s in spec.stages] == ["plan", "execute"]
    assert [s.effective_phase for s in spec.stages] == ["plan", "execute"]
    assert spec.allowed_tools == ["python"]
    assert spec.select_model_for_phase("plan") != spec.select_model_for_phase("execute")
    assert spec.select_model_for_phase("search") == spec.model_policy.default
    assert spec.workspace.path == ".maestro/workspaces/fix-failing-test"
    (gate,) = spec.quality_gates.required
    assert gate.kind == "test_pass" and "--junitxml={junit_xml}" in gate.run
    assert "no:cacheprovider" in gate.run, "pytest must not write .pytest_cache into the workspace"
    template = JOBSPECS / "examples" / spec.workspace.template
    for stage in spec.stages:
        assert (template / stage.run[1]).is_file(), f"{stage.id} runs a script the template does not ship"
    assert spec.stop_conditions.max_iterations == 5
    assert spec.stop_conditions.no_progress_iterations == 3
    assert spec.budgets.total_usd == 1.0 and spec.budgets.tokens == 200_000
    assert spec.defaults.timeout == 120


# --------------------------------------------------------------------------- schema


def test_committed_schema_matches_models():
    committed = SCHEMA_PATH.read_text(encoding="utf-8")
    assert committed == schema_mod.render_schema(), (
        "jobspecs/job.schema.json drifted from longrun/spec/models.py; regenerate it with: python -m longrun.spec.schema"
    )
    assert schema_mod.main(["--check"]) == 0


def test_committed_schema_is_draft_2020_12():
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_committed_schema_validates_example(path: Path, validator):
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(yaml.safe_load(path.read_text("utf-8")))]
    assert errors == []


def test_committed_schema_validates_base(validator):
    assert list(validator.iter_errors(base())) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("tmeout", 1),
        ("stages[0].tmeout", 1),
        ("stop_conditions.max_iterations", "ten"),
        ("quality_gates.required[0].kind", "vibes"),
        ("goal", DELETE),
    ],
)
def test_committed_schema_rejects_what_the_models_reject(path, value, validator):
    data = set_path(base(), path, value)
    assert list(validator.iter_errors(data)), "the schema accepted a spec the models reject"
    problems(data)


# --------------------------------------------------------------------------- job ids


def test_job_id_is_sha256_of_the_identity_json():
    spec = parse_spec_text(BASE)
    canonical = canonical_json(spec)
    assert json.dumps(json.loads(canonical), sort_keys=True, separators=(",", ":"), ensure_ascii=False) == canonical
    ident = identity_json(spec)
    assert json.loads(ident) == spec.model_dump(mode="json", exclude_defaults=True)
    assert job_id_for(spec) == hashlib.sha256(ident.encode("utf-8")).hexdigest()[:12]
    assert re.fullmatch(r"[0-9a-f]{12}", job_id_for(spec))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_job_id_is_the_same_for_yaml_and_json(path: Path, tmp_path: Path):
    from_yaml = load_spec(path)
    as_json = tmp_path / f"{path.stem}.json"
    as_json.write_text(json.dumps(yaml.safe_load(path.read_text("utf-8")), indent=4), encoding="utf-8")
    from_json = load_spec(as_json)
    assert from_json.job_id == from_yaml.job_id
    assert from_json.canonical == from_yaml.canonical


def test_job_id_ignores_key_order_and_formatting():
    expected = job_id_for(parse_spec_text(BASE))
    shuffled = reorder(base())
    variants = [
        yaml.safe_dump(shuffled, sort_keys=False, default_flow_style=True, width=10_000),
        yaml.safe_dump(shuffled, sort_keys=False, indent=6),
        json.dumps(shuffled, separators=(",", ":")),
        "# a comment\n\n" + BASE.replace("timeout: 60", "timeout: 60.0  # seconds"),
    ]
    for text in variants:
        assert job_id_for(parse_spec_text(text)) == expected, text


def test_job_id_counts_effective_values_not_spelling():
    """Spelling out a default does not make another job: ids hash the effective spec."""
    explicit = set_path(base(), "mode", "advisory")
    explicit = set_path(explicit, "stages[0].depends_on", [])
    explicit = set_path(explicit, "stop_conditions.stop_file", ".maestro/STOP")
    assert job_id_for(parse_spec_text(json.dumps(explicit))) == job_id_for(parse_spec_text(BASE))


def test_job_id_does_not_depend_on_the_interpreter(tmp_path: Path):
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(BASE, encoding="utf-8")
    code = "import sys; from longrun.spec import load_spec; print(load_spec(sys.argv[1]).job_id)"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, str(spec_file)], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == load_spec(spec_file).job_id


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("goal", "Make the tests pass!"),
        ("stop_conditions.max_iterations", 6),
        ("stages[0].run[2]", "replan"),
        ("model_policy.execute", "other-model"),
        ("budgets", {"total_usd": 1.0}),
        ("quality_gates.optional", [{"id": "lint", "kind": "command_pass", "run": ["python", "-m", "ruff"]}]),
        ("tags", ["nightly"]),
    ],
)
def test_job_id_changes_when_a_field_changes(path, value):
    before = job_id_for(parse_spec_text(BASE))
    after = job_id_for(parse_spec_text(json.dumps(set_path(base(), path, value))))
    assert after != before


# --------------------------------------------------------------------------- broken specs


BROKEN = [
    # (case id, path to set, value, exact problem paths)
    ("wrong-type-int", "stop_conditions.max_iterations", "ten", ["stop_conditions.max_iterations"]),
    ("wrong-type-list", "stages[1].run", "python agent.py", ["stages[1].run"]),
    ("wrong-type-nested", "stages[1].timeout", "soon", ["stages[1].timeout"]),
    ("unknown-top-level", "tmeout", 30, ["tmeout"]),
    ("unknown-nested", "stages[0].tmeout", 30, ["stages[0].tmeout"]),
    ("unknown-in-gate", "quality_gates.required[0].junit", "x.xml", ["quality_gates.required[0].junit"]),
    ("unknown-gate-kind", "quality_gates.required[0].kind", "vibes", ["quality_gates.required[0]"]),
    ("missing-goal", "goal", DELETE, ["goal"]),
    ("empty-goal", "goal", "", ["goal"]),
    ("missing-model-policy-default", "model_policy.default", DELETE, ["model_policy.default"]),
    ("bad-name", "name", "Base Job", ["name"]),
    ("bad-timezone", "schedule", {"cron": "0 3 * * *", "timezone": "Mars/Olympus"}, ["schedule.timezone"]),
    ("missing-timezone", "schedule", {"cron": "0 3 * * *"}, ["schedule.timezone"]),
    ("bad-cron", "schedule", {"cron": "0 3 * *", "timezone": "UTC"}, ["schedule.cron"]),
    ("negative-budget", "budgets", {"total_usd": -0.5}, ["budgets.total_usd"]),
    ("duplicate-stage-id", "stages[1].id", "plan", ["stages[1].id"]),
    ("unknown-depends-on", "stages[1].depends_on", ["nope"], ["stages[1].depends_on[0]"]),
    ("self-dependency", "stages[0].depends_on", ["plan"], ["stages[0].depends_on[0]"]),
    ("unknown-approval-stage", "approvals[0].before", "deploy", ["approvals[0].before"]),
    ("escalate-unknown-gate", "approvals[0]", {"escalate": "nope"}, ["approvals[0].escalate"]),
    ("escalate-gate-that-retries", "approvals[0]", {"escalate": "tests"}, ["approvals[0].escalate"]),
    ("escalate-and-before", "approvals[0]", {"escalate": "tests", "before": "plan"}, ["approvals[0]", "approvals[0].escalate"]),
    ("stage-tool-not-allowed", "stages[0].run[0]", "bash", ["stages[0].run[0]"]),
    ("gate-tool-not-allowed", "quality_gates.required[0].run[0]", "pytest", ["quality_gates.required[0].run[0]"]),
    ("workspace-escape", "workspace", {"path": "../x"}, ["workspace.path"]),
    ("workspace-absolute", "workspace", {"path": "/srv/x"}, ["workspace.path"]),
    ("template-escape", "workspace", {"template": "../../elsewhere"}, ["workspace.template"]),
    ("plan-file-escape", "plan_file", "../../x", ["plan_file"]),
    ("stop-file-escape", "stop_conditions.stop_file", "../STOP", ["stop_conditions.stop_file"]),
    ("junit-escape", "quality_gates.required[0].junit_xml", "../report.xml", ["quality_gates.required[0].junit_xml"]),
]


@pytest.mark.parametrize(("path", "value", "expected"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_spec_reports_exact_paths(path, value, expected):
    found = problems(set_path(base(), path, value))
    assert sorted(p.path for p in found) == expected, found
    assert all(p.file == "job.yaml" for p in found)


def test_an_escalate_entry_sets_how_the_escalation_waits():
    data = set_path(base(), "quality_gates.required[0].on_failure", {"action": "escalate", "max_retries": 1})
    data = set_path(
        data, "approvals", [{"before": "plan"}, {"escalate": "tests", "timeout": 30, "poll_interval": 1, "mode": "suspend"}]
    )
    spec = parse_spec_text(yaml.safe_dump(data), file="job.yaml")
    entry = spec.approvals[1]
    assert (entry.step_name, entry.timeout, entry.poll_interval, entry.mode) == ("escalate:tests", 30, 1, "suspend")
    # The job-wide on_failure counts for a gate that sets none.
    data = set_path(base(), "on_failure", {"action": "escalate"})
    data = set_path(data, "approvals", [{"escalate": "tests"}])
    assert parse_spec_text(yaml.safe_dump(data), file="job.yaml").approvals[0].step_name == "escalate:tests"
    # Its step name is fixed; the messages say why an entry is refused.
    data = set_path(base(), "approvals", [{"escalate": "tests", "step": "x"}])
    assert "drop 'step'" in problems(data)[0].message
    data = set_path(base(), "approvals", [{"escalate": "tests"}])
    assert "does not escalate (its on_failure action is 'retry')" in problems(data)[0].message


def test_messages_say_what_is_wrong():
    def message(path: str, value: Any) -> str:
        (problem,) = problems(set_path(base(), path, value))
        return problem.message

    assert message("tmeout", 1) == "unknown field"
    assert message("goal", DELETE) == "field required"
    assert "IANA" in message("schedule", {"cron": "0 3 * * *", "timezone": "Mars/Olympus"})
    assert "escapes the workspace" in message("plan_file", "../../x")
    assert "'bash' is not in allowed_tools" in message("stages[0].run[0]", "bash")
    assert "duplicate stage id 'plan'" in message("stages[1].id", "plan")
    assert "unknown stage 'nope'" in message("stages[1].depends_on", ["nope"])


def test_scope_path_escape_reports_the_item():
    assert paths(set_path(base(), "scope_paths", ["src", "/etc", "../up"])) == ["scope_paths[1]", "scope_paths[2]"]


def test_scope_path_escape_is_refused():
    """What holds today, whatever the path granularity: both kinds of escape are refused."""
    for bad in ("/etc", "../up", "src/../../up"):
        (problem,) = problems(set_path(base(), "scope_paths", ["src", bad]))
        assert problem.path.startswith("scope_paths")
        assert "escapes the workspace" in problem.message


def test_env_key_named_like_a_gate_kind_keeps_its_path():
    assert paths(set_path(base(), "stages[0].env", {"approval": 5})) == ["stages[0].env.approval"]


def test_depends_on_cycle():
    data = set_path(base(), "stages[0].depends_on", ["execute"])
    data = set_path(data, "stages[1].depends_on", ["plan"])
    (problem,) = problems(data)
    assert problem.path == "stages"
    assert "cycle" in problem.message and "plan" in problem.message and "execute" in problem.message


def test_yaml_syntax_error_names_the_line():
    text = BASE.replace("goal: Make the tests pass.", "goal: [unclosed")
    (problem,) = problems(text)
    assert problem.path == "$"
    assert "YAML syntax error" in problem.message and "line " in problem.message

    (problem,) = problems("name: x\n  bad: indent\n")
    assert problem.path == "$" and "line 2" in problem.message


def test_json_syntax_error_is_a_spec_error():
    (problem,) = problems('{"name": "x", "goal": "y"')
    assert problem.path == "$" and "line " in problem.message


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "---\n"], ids=["empty", "blank", "comment", "doc-marker"])
def test_empty_document(text):
    (problem,) = problems(text)
    assert problem.path == "$" and "empty" in problem.message


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_top_level_must_be_a_mapping(text, kind):
    (problem,) = problems(text)
    assert problem.path == "$" and kind in problem.message


def test_many_errors_are_reported_at_once():
    text = """\
name: Bad Name
goal: ""
allowed_tools: [python]
tmeout: 1
model_policy: {}
budgets: {total_usd: -1, tokens: 1.5}
stages:
  - id: a
    run: [bash, x]
    timeout: -3
  - id: a
    run: [python]
    depends_on: [ghost]
quality_gates:
  required:
    - {id: t, kind: test_pass, run: [pytest], colour: red}
stop_conditions: {max_iterations: 0, stop_file: ../STOP}
schedule: {cron: "0 3 * * *", timezone: Nowhere/City}
workspace: {path: ../x}
"""
    assert paths(text) == sorted(
        [
            "name",
            "goal",
            "tmeout",
            "model_policy.default",
            "budgets.total_usd",
            "budgets.tokens",
            "stages[0].timeout",
            "stages[0].run[0]",
            "stages[1].id",
            "stages[1].depends_on[0]",
            "quality_gates.required[0].colour",
            "quality_gates.required[0].run[0]",
            "stop_conditions.max_iterations",
            "stop_conditions.stop_file",
            "schedule.timezone",
            "workspace.path",
        ]
    )


def test_spec_error_is_serialisable():
    with pytest.raises(SpecError) as info:
        parse_spec_text(yaml.safe_dump(set_path(base(), "tmeout", 1)), file="jobs/x.yaml")
    err = info.value
    assert err.to_dict() == {
        "code": "job_invalid_spec",
        "message": "1 problem(s)",
        "problems": [{"path": "tmeout", "message": "unknown field", "file": "jobs/x.yaml"}],
    }
    assert "jobs/x.yaml: tmeout: unknown field" in str(err)


# --------------------------------------------------------------------------- files


def test_problems_carry_the_file(tmp_path: Path):
    spec_file = tmp_path / "broken.yaml"
    spec_file.write_text(yaml.safe_dump(set_path(base(), "stages[0].tmeout", 1)), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(spec_file)
    assert [(p.path, p.file) for p in info.value.problems] == [("stages[0].tmeout", str(spec_file))]


def test_empty_file(tmp_path: Path):
    spec_file = tmp_path / "empty.yaml"
    spec_file.write_bytes(b"")
    with pytest.raises(SpecError) as info:
        load_spec(spec_file)
    assert [(p.path, p.file) for p in info.value.problems] == [("$", str(spec_file))]


def test_not_utf8(tmp_path: Path):
    spec_file = tmp_path / "latin1.yaml"
    spec_file.write_bytes(BASE.replace("Make", "M\xe4ke").encode("latin-1"))
    with pytest.raises(SpecError) as info:
        load_spec(spec_file)
    assert [p.path for p in info.value.problems] == ["$"]


def test_missing_file_is_job_not_found(tmp_path: Path):
    with pytest.raises(JobNotFound) as info:
        load_spec(tmp_path / "nope.yaml")
    assert info.value.code == "job_not_found"
    assert "nope.yaml" in info.value.message


def test_directory_is_job_not_found(tmp_path: Path):
    with pytest.raises(JobNotFound) as info:
        load_spec(tmp_path)
    assert info.value.code == "job_not_found"


def test_yaml_booleans_are_yaml_1_2_only():
    """`on`, `no`, `yes`, `off` stay strings (YAML 1.1 would make them booleans)."""
    from longrun.spec.loader import parse_spec_text

    spec = parse_spec_text(
        "name: x\ngoal: g\nallowed_tools: [python]\nmodel_policy: {default: m}\n"
        "stages: [{id: a, run: [python, 'no', 'on'], shell: false, env: {FLAG: yes}}]\n"
        "quality_gates: {required: [{id: no, kind: command_pass, run: [python]}]}\n"
    )
    assert spec.stages[0].run == ["python", "no", "on"]
    assert spec.stages[0].shell is False
    assert spec.stages[0].env == {"FLAG": "yes"}
    assert spec.quality_gates.required[0].id == "no"


def test_stage_and_gate_env_cannot_override_engine_variables():
    from longrun.errors import SpecError
    from longrun.spec.loader import parse_spec_text

    with pytest.raises(SpecError) as exc:
        parse_spec_text(
            "name: x\ngoal: g\nallowed_tools: [python]\nmodel_policy: {default: m}\n"
            "stages: [{id: a, run: [python], env: {LONGRUN_JOB_ID: fake, OK: '1'}}]\n"
            "quality_gates: {required: [{id: t, kind: command_pass, run: [python], env: {LONGRUN_ITERATION: '9'}}]}\n"
        )
    paths = {p.path: p.message for p in exc.value.problems}
    assert "LONGRUN_JOB_ID" in paths["stages[0].env"]
    assert "LONGRUN_ITERATION" in paths["quality_gates.required[0].env"]


# --------------------------------------------------------------------------- workspace.repo


def test_workspace_repo_ref_and_push_branch_load():
    data = set_path(base(), "workspace", {"path": "ws", "repo": "file:///srv/git/app.git", "push_branch": "longrun/review"})
    ws = parse_spec_text(yaml.safe_dump(data)).workspace
    assert (ws.repo, ws.ref, ws.push_branch) == ("file:///srv/git/app.git", None, "longrun/review")
    for url in ("https://git.example.com/a/b.git", "ssh://git@host/a.git", "git@github.com:o/r.git", "/srv/git/app.git"):
        assert parse_spec_text(yaml.safe_dump(set_path(data, "workspace.repo", url))).workspace.repo == url
    for ref in ("main", "v1.2.0", "release/2026", "0123abcd"):
        assert parse_spec_text(yaml.safe_dump(set_path(data, "workspace.ref", ref))).workspace.ref == ref


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ext::sh -c touch% /tmp/pwned", "remote helper"),
        ("fd::3", "remote helper"),
        ("foo::bar", "remote helper"),
        ("-uhoh", "starts with '-'"),
        ("--upload-pack=touch /tmp/pwned", "starts with '-'"),
        ("https://host/a\nb", "control characters"),
        ("file:///a\x1b[31m", "control characters"),
        ("gopher://host/a", "scheme 'gopher'"),
        ("relative/path", "not a git URL"),
        (" https://host/a", "spaces"),
    ],
)
def test_dangerous_workspace_repo_urls_are_spec_errors(url, why):
    found = problems(set_path(base(), "workspace", {"path": "ws", "repo": url}))
    assert [p.path for p in found] == ["workspace.repo"]
    assert why in found[0].message


@pytest.mark.parametrize("ref", ["-b", "a..b", "a b", "a:b", "a~1", "x^", "ends/", ".hidden", "x.lock"])
def test_bad_refs_are_spec_errors(ref):
    data = set_path(base(), "workspace", {"path": "ws", "repo": "/srv/r.git", "ref": ref, "push_branch": ref})
    assert paths(data) == ["workspace.push_branch", "workspace.ref"]


def test_repo_excludes_template_path_dot_and_worktree_isolation():
    with_template = set_path(base(), "workspace", {"path": "ws", "repo": "/srv/r.git", "template": "t"})
    assert [p.message for p in problems(with_template)] == [
        "repo and template are mutually exclusive: the workspace is cloned or copied, not both"
    ]
    assert "not '.'" in problems(set_path(base(), "workspace", {"repo": "/srv/r.git"}))[0].message
    assert paths(set_path(base(), "workspace", {"path": "ws", "ref": "main"})) == ["workspace"]
    isolated = set_path(set_path(base(), "workspace", {"path": "ws", "repo": "/srv/r.git"}), "isolation", "worktree")
    assert paths(isolated) == ["isolation"]
