"""Job ids: the sha256 of the spec without its defaulted values (SPEC S3).

The golden ids pin the example specs: a change to the id rule, or to a
default that an example relies on, fails here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from longrun.errors import LongrunError
from longrun.spec.loader import (
    SPEC_SCHEMA,
    canonical_json,
    identity_json,
    job_id_for,
    load_canonical,
    load_spec,
    validate_spec_data,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "jobspecs" / "examples"

GOLDEN = {
    "fix-failing-test.yaml": "5ca6a4da52ac",
    "hello-loop.yaml": "2ea0256c0c47",
}


def _raw(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def test_every_example_has_a_golden_id():
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(GOLDEN)
    for name, job_id in GOLDEN.items():
        assert load_spec(EXAMPLES / name).job_id == job_id, name


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_writing_defaults_out_at_any_depth_keeps_the_id(name):
    raw = _raw(name)
    spelled = copy.deepcopy(raw)
    spelled["version"] = "longrun/v1"
    spelled.setdefault("budgets", {}).setdefault("on_hourly_limit", "stop")
    spelled.setdefault("evidence", {})
    spelled.setdefault("mode", "advisory")
    spelled.setdefault("isolation", "none")
    spelled["stop_conditions"] = {"stop_file": ".maestro/STOP", **raw.get("stop_conditions", {})}
    for stage in spelled["stages"]:
        stage.setdefault("depends_on", [])
        stage.setdefault("env", {})
    # The whole effective spec written out is the same job too.
    full = validate_spec_data(raw).model_dump(mode="json")
    ids = {job_id_for(validate_spec_data(d)) for d in (raw, spelled, full)}
    assert ids == {GOLDEN[name]}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_changing_a_value_changes_the_id(name):
    raw = _raw(name)
    raw["stop_conditions"] = {**raw.get("stop_conditions", {}), "max_iterations": 17}
    assert job_id_for(validate_spec_data(raw)) != GOLDEN[name]


def test_the_identity_json_leaves_defaults_out_and_keeps_discriminators():
    ident = json.loads(identity_json(load_spec(EXAMPLES / "fix-failing-test.yaml").spec))
    assert "version" not in ident and "mode" not in ident
    assert all("kind" in g for g in ident["quality_gates"]["required"])


def test_spec_json_carries_its_schema_and_old_schema_1_files_still_load():
    loaded = load_spec(EXAMPLES / "hello-loop.yaml")
    stored = json.loads(loaded.canonical)
    assert stored["spec_schema"] == SPEC_SCHEMA == 2 and stored["spec"]["name"] == "hello-loop"
    again = load_canonical(canonical_json(loaded.spec))
    assert again.spec == loaded.spec
    # longrun 0.1 stored the bare spec (schema 1).
    legacy = json.dumps(loaded.spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    assert load_canonical(legacy).spec == loaded.spec


def test_a_newer_spec_schema_is_refused():
    with pytest.raises(LongrunError) as err:
        load_canonical(json.dumps({"spec_schema": 99, "spec": {}}))
    assert err.value.code == "spec_schema_unsupported"
