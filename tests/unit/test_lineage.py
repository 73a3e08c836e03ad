"""Lineage of spawned jobs (SPEC S4) and a lineage's spend, over real spec files and job dirs."""

from __future__ import annotations

import json
import os

import pytest

from longrun.errors import LongrunError, SpecError
from longrun.governance.lineage import LineageSpend, collect_children, lineage_of, spend_for_root
from longrun.journal.registry import register
from longrun.spec import load_spec
from longrun.spec.loader import job_id_for

SPEC = """
name: {name}
goal: {goal}
allowed_tools: [python]
model_policy: {{default: m}}
stages: [{{id: execute, run: [python]}}]
"""


def spec_file(path, name, goal="g"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SPEC.format(name=name, goal=goal))
    return path


@pytest.fixture
def parent(tmp_path):
    return load_spec(spec_file(tmp_path / "parent.yaml", "parent"))


def test_children_get_lineage_and_deterministic_ids(tmp_path, parent):
    spawn = tmp_path / "spawn"
    spec_file(spawn / "b.yml", "child-b")
    spec_file(spawn / "a.yaml", "child-a")
    (spawn / "c.json").write_text(
        json.dumps(
            {
                "name": "child-c",
                "goal": "g",
                "allowed_tools": ["python"],
                "model_policy": {"default": "m"},
                "stages": [{"id": "execute", "run": ["python"]}],
            }
        )
    )
    (spawn / "notes.txt").write_text("ignored\n")
    children = collect_children(spawn, parent)
    assert [c.source.name for c in children] == ["a.yaml", "b.yml", "c.json"]
    for c in children:
        lin = c.loaded.spec.lineage
        assert (lin.root_job_id, lin.parent_job_id, lin.generation) == (parent.job_id, parent.job_id, 1)
        assert c.lineage == lin and c.job_id == job_id_for(c.loaded.spec) == c.loaded.job_id
        assert json.loads(c.loaded.canonical)["spec"]["lineage"]["generation"] == 1
    # The same file loaded plainly has no lineage and so another id.
    assert load_spec(spawn / "a.yaml").job_id != children[0].job_id
    assert [c.job_id for c in collect_children(spawn, parent)] == [c.job_id for c in children]  # deterministic


def test_grandchildren_keep_the_root_and_count_generations(tmp_path, parent):
    spec_file(tmp_path / "s1" / "child.yaml", "child")
    (child,) = collect_children(tmp_path / "s1", parent)
    assert lineage_of(parent) == (parent.job_id, 0) and lineage_of(child.loaded) == (parent.job_id, 1)
    spec_file(tmp_path / "s2" / "grandchild.yaml", "grandchild")
    (gc,) = collect_children(tmp_path / "s2", child.loaded)
    lin = gc.loaded.spec.lineage
    assert (lin.root_job_id, lin.parent_job_id, lin.generation) == (parent.job_id, child.job_id, 2)


def test_too_deep_is_refused(tmp_path, parent):
    spec_file(tmp_path / "spawn" / "x.yaml", "x")
    with pytest.raises(LongrunError) as exc:
        collect_children(tmp_path / "spawn", parent.job_id, root_job_id="a" * 12, generation=3)
    assert exc.value.code == "lineage_too_deep" and "exceeds max_generation 3" in exc.value.message
    with pytest.raises(LongrunError) as exc:
        collect_children(tmp_path / "spawn", parent, max_generation=0)
    assert exc.value.code == "lineage_too_deep"
    (c,) = collect_children(tmp_path / "spawn", parent.job_id, root_job_id="a" * 12, generation=2)
    assert c.lineage.generation == 3  # exactly max_generation is allowed
    assert collect_children(tmp_path / "empty", parent, max_generation=0) == []  # nothing to spawn


def test_a_forged_lineage_in_the_file_is_replaced(tmp_path, parent):
    path = spec_file(tmp_path / "spawn" / "sneaky.yaml", "sneaky")
    path.write_text(path.read_text() + "lineage: {root_job_id: ffffffffffff, parent_job_id: ffffffffffff, generation: 1}\n")
    (c,) = collect_children(tmp_path / "spawn", parent)
    assert c.loaded.spec.lineage.root_job_id == parent.job_id


def test_every_bad_file_is_named_at_once(tmp_path, parent):
    spawn = tmp_path / "spawn"
    spec_file(spawn / "good.yaml", "good")
    (spawn / "bad1.yaml").write_text("name: Bad Name\ngoal: g\n")
    (spawn / "bad2.json").write_text("{not json")
    outside = spec_file(tmp_path / "outside.yaml", "outside")
    os.symlink(outside, spawn / "link.yaml")
    with pytest.raises(SpecError) as exc:
        collect_children(spawn, parent)
    files = {os.path.basename(p.file) for p in exc.value.problems}
    assert files == {"bad1.yaml", "bad2.json", "link.yaml"}
    assert exc.value.code == "job_invalid_spec"
    assert any("outside" in p.message for p in exc.value.problems if p.file.endswith("link.yaml"))


def test_parent_id_needs_root_and_generation(tmp_path, parent):
    with pytest.raises(TypeError):
        collect_children(tmp_path, parent.job_id)


def spend(record, usd, tokens):
    j = record.journal
    j.append("run_started", {"run_id": "r"}, job_id=record.job_id)
    j.append("iteration_started", {"iteration": 1}, job_id=record.job_id)
    j.append(
        "stage_finished",
        {
            "iteration": 1,
            "stage": "execute",
            "exit_code": 0,
            "duration_s": 1,
            "model": "m",
            "usage": {"usd": usd, "tokens": tokens},
        },
        job_id=record.job_id,
    )


def test_spend_for_root_sums_the_lineage(tmp_path, parent):
    root = tmp_path / "jobs-root"
    spend(register(parent, root), 1.0, 100)
    spec_file(tmp_path / "s1" / "child.yaml", "child")
    (child,) = collect_children(tmp_path / "s1", parent)
    spend(register(child.loaded, root), 0.25, 20)
    spec_file(tmp_path / "s2" / "gc.yaml", "gc")
    (gc,) = collect_children(tmp_path / "s2", child.loaded)
    spend(register(gc.loaded, root), 0.5, 3)
    register(collect_children(tmp_path / "s2", child.loaded)[0].loaded, root)  # same job again: no-op
    stranger = load_spec(spec_file(tmp_path / "stranger.yaml", "stranger"))
    spend(register(stranger, root), 9.0, 900)

    assert spend_for_root(root, parent.job_id) == (1.75, 123)
    assert spend_for_root(root, parent.job_id, include_root=False) == (0.75, 23)
    assert spend_for_root(root, stranger.job_id) == (9.0, 900)
    assert spend_for_root(root, "0" * 12) == (0.0, 0)


def test_lineage_spend_is_kept_incrementally_and_equals_a_full_replay(tmp_path, parent):
    root = tmp_path / "jobs-root"
    spend(register(parent, root), 1.0, 100)
    live = LineageSpend(root, parent.job_id)
    assert live() == (0.0, 0)
    spec_file(tmp_path / "s1" / "child.yaml", "child")
    (child,) = collect_children(tmp_path / "s1", parent)
    child_record = register(child.loaded, root)
    spend(child_record, 0.25, 20)
    assert live() == spend_for_root(root, parent.job_id, include_root=False) == (0.25, 20)
    # More spend by the child: only what its journal gained is read.
    spend(child_record, 0.5, 5)
    journal = live._journals[child.job_id]
    before = journal._cursor[0]
    assert live() == spend_for_root(root, parent.job_id, include_root=False) == (0.75, 25)
    assert journal._cursor[0] > before
    stranger = load_spec(spec_file(tmp_path / "stranger.yaml", "stranger"))
    spend(register(stranger, root), 9.0, 900)
    assert live() == (0.75, 25)
