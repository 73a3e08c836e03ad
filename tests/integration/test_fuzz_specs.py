"""Fuzzed specs through the real CLI entry: an invalid spec only ever exits 2 with ``job_invalid_spec``.

Never another exception, never another code, never longer than 10 s. Inputs:
near-valid documents generated from ``jobspecs/job.schema.json`` (hypothesis-
jsonschema) with one subtree replaced, random bytes, YAML with anchors,
aliases and tags, deep nesting, a 10 MB file, lone surrogates and type
confusion. ``longrun validate`` and ``longrun plan`` run in-process through
``longrun.cli.main.main`` (the console script's function) for the bounded
sweeps, and a few cases through the installed ``longrun`` command itself.
The ``slow`` marker holds a larger sweep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from longrun.cli.main import main

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "jobspecs" / "job.schema.json").read_text())
LIMIT_S = 10.0
VALID = {
    "name": "fuzz",
    "goal": "g",
    "allowed_tools": ["python"],
    "model_policy": {"default": "m"},
    "stages": [{"id": "a", "run": ["python", "-c", "pass"]}],
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def check(tmp: Path, data: bytes, capsys, *, command: str = "validate", may_pass: bool = False) -> None:
    """Run the CLI entry on ``data``; it exits 0 (only if ``may_pass``) or 2 with job_invalid_spec, in time."""
    spec = tmp / "spec.yaml"
    spec.write_bytes(data)
    capsys.readouterr()
    argv = [command, str(spec), "--json"] + (["--root", str(tmp)] if command == "plan" else [])
    started = time.monotonic()
    code = main(argv)
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert elapsed < LIMIT_S, f"{command} took {elapsed:.1f}s"
    if code == 0 and may_pass:
        return
    assert code == 2, (code, out[:500])
    assert json.loads(out)["error"]["code"] == "job_invalid_spec", out[:500]


def mutate(doc: dict, path: list[str | int], value) -> dict:
    """``doc`` with the subtree at ``path`` (as far as it exists) replaced by ``value``."""
    doc = json.loads(json.dumps(doc))
    node = doc
    for key in path[:-1]:
        nxt = node[key] if isinstance(node, dict) and key in node else None
        if isinstance(node, list) and isinstance(key, int) and key < len(node):
            nxt = node[key]
        if not isinstance(nxt, (dict, list)):
            break
        node = nxt
    if isinstance(node, dict):
        node[path[-1] if isinstance(path[-1], str) else "x"] = value
    elif isinstance(node, list) and node:
        node[0] = value
    return doc


def dump(doc) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


SMALL = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
#: The larger sweep: bounded for every run of the suite (CI included); LONGRUN_FUZZ_EXAMPLES=600 for a long one.
LARGE = settings(
    max_examples=int(os.environ.get("LONGRUN_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


def _schema_docs(tmp_path_factory, capsys, doc):
    check(tmp_path_factory.mktemp("fz"), dump(doc), capsys, may_pass=True)


@SMALL
@given(doc=from_schema(SCHEMA))
def test_schema_generated_specs_validate_or_exit_2(tmp_path_factory, capsys, doc):
    _schema_docs(tmp_path_factory, capsys, doc)


@SMALL
@given(
    path=st.lists(
        st.sampled_from(["stages", 0, "depends_on", "run", "env", "schedule", "quality_gates", "required", "id", "name"]),
        min_size=1,
        max_size=4,
    ),
    value=json_values,
)
def test_near_valid_specs_exit_2_or_validate(tmp_path_factory, capsys, path, value):
    check(tmp_path_factory.mktemp("fz"), dump(mutate(VALID, path, value)), capsys, may_pass=True)


@SMALL
@given(data=st.binary(max_size=2000))
def test_random_bytes_exit_2(tmp_path_factory, capsys, data):
    check(tmp_path_factory.mktemp("fz"), data, capsys, may_pass=False)


@SMALL
@given(text=st.text(max_size=300))
def test_random_text_with_yaml_syntax_exits_2_through_plan(tmp_path_factory, capsys, text):
    check(tmp_path_factory.mktemp("fz"), ("name: [\n" + text).encode("utf-8", "surrogatepass"), capsys, command="plan")


ADVERSARIAL = {
    "depends_on_scalar": yaml.safe_dump({**VALID, "stages": [{"id": "a", "run": ["python"], "depends_on": 5}]}),
    "depends_on_nested_list": yaml.safe_dump({**VALID, "stages": [{"id": "a", "run": ["python"], "depends_on": [[1]]}]}),
    "stages_mapping": yaml.safe_dump({**VALID, "stages": {"a": 1}}),
    "lone_surrogate_escape": 'name: "\\ud800"\ngoal: g\n',
    "lone_surrogate_in_env": yaml.safe_dump(VALID) + 'tags: ["\\udfff"]\n',
    "deep_flow_nesting": "a: " + "[" * 100_000,
    "deep_block_nesting": "".join("  " * i + f"k{i}:\n" for i in range(200)),
    "recursive_alias": "a: &a [*a]\n" + yaml.safe_dump(VALID),
    "billion_laughs": "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else '1'}]\n" for i in range(10)),
    "python_tag": "name: !!python/object/apply:os.system [true]\n",
    "binary_tag": yaml.safe_dump(VALID).replace("name: fuzz", "name: !!binary aGVsbG8="),
    "timestamp_tag": yaml.safe_dump(VALID).replace("goal: g", "goal: 2024-01-01"),
    "unknown_tag": "name: !shout x\n",
    "duplicate_key": yaml.safe_dump(VALID) + "name: again\n",
    "env_key_with_equals": yaml.safe_dump({**VALID, "stages": [{"id": "a", "run": ["python"], "env": {"A=B": "c"}}]}),
    "env_value_with_nul": json.dumps({**VALID, "stages": [{"id": "a", "run": ["python"], "env": {"A": "x\u0000y"}}]}),
    "env_passthrough_bad_name": yaml.safe_dump({**VALID, "stages": [{"id": "a", "run": ["python"], "env_passthrough": ["A B"]}]}),
    "cron_out_of_range": yaml.safe_dump({**VALID, "schedule": {"cron": "61 * * * *", "timezone": "UTC"}}),
    "cron_hashed": yaml.safe_dump({**VALID, "schedule": {"cron": "H 2 * * *", "timezone": "UTC"}}),
    "posix_tz": yaml.safe_dump({**VALID, "schedule": {"cron": "0 2 * * *", "timezone": "EST+5EDT,M3.2.0/2,M11.1.0/2"}}),
    "shell_without_allow_shell": yaml.safe_dump({**VALID, "stages": [{"id": "a", "run": ["python"], "shell": True}]}),
    "sandbox_typo": yaml.safe_dump({**VALID, "sandbox": "off"}),
    "key_is_a_list": "? [a, b]\n: c\n",
    "nul_byte": "name: a\x00b\n",
    "bom_and_crlf": "\ufeffname: a\r\ngoal: [\r\n",
}


@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
def test_adversarial_yaml_exits_2(tmp_path, capsys, case):
    check(tmp_path, ADVERSARIAL[case].encode("utf-8", "surrogatepass"), capsys)


def test_a_10_mb_spec_exits_2_without_being_parsed(tmp_path, capsys):
    check(tmp_path, b"goal: '" + b"x" * (10 << 20) + b"'\n", capsys)


@pytest.mark.parametrize("case", ["depends_on_scalar", "deep_flow_nesting", "lone_surrogate_escape", "billion_laughs"])
def test_the_installed_command_exits_2_with_job_invalid_spec(tmp_path, case):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(ADVERSARIAL[case].encode("utf-8", "surrogatepass"))
    for command in ("validate", "plan"):
        r = subprocess.run(
            [sys.executable, "-m", "longrun.cli.main", command, str(spec), "--json", "--root", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=LIMIT_S,
        )
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        assert json.loads(r.stdout)["error"]["code"] == "job_invalid_spec"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 0.3 s per generated spec: beyond the suite's 300 s per test
@LARGE
@given(
    doc=from_schema(SCHEMA),
    path=st.lists(st.sampled_from(["stages", 0, "run", "env", "schedule", "id"]), max_size=3),
    value=json_values,
)
def test_large_sweep_of_schema_specs_with_a_replaced_subtree(tmp_path_factory, capsys, doc, path, value):
    if path:
        doc = mutate(doc, path, value)
    check(tmp_path_factory.mktemp("fz"), dump(doc), capsys, may_pass=True, command="plan")
