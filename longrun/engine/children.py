"""Child specs a stage wrote into ``LONGRUN_SPAWN_DIR`` become registered jobs (SPEC S4)."""

from __future__ import annotations

from longrun.engine.session import Session
from longrun.errors import LongrunError
from longrun.governance.lineage import collect_children
from longrun.journal.registry import find_job, register


def register_children(s: Session, iteration: int) -> None:
    rt = s.rt
    spawn_dir = rt.paths.iteration_dir(iteration) / "spawn"
    if not spawn_dir.is_dir() or not any(spawn_dir.iterdir()):
        return
    root_job_id = rt.spec.lineage.root_job_id if rt.spec.lineage else rt.job_id
    generation = rt.spec.lineage.generation if rt.spec.lineage else 0
    limit = rt.spec.max_generation
    if rt.spec.lineage is not None:
        # The root's limit bounds the whole tree; a child cannot raise it for its own children.
        try:
            limit = min(limit, find_job(rt.root, root_job_id).load().spec.max_generation)
        except LongrunError:
            pass
    for child in collect_children(spawn_dir, rt.loaded, root_job_id, generation, limit):
        if child.job_id in s.state.children:
            continue
        register(child.loaded, rt.root)
        s.emit(
            "child_spawned",
            {
                "iteration": iteration,
                "child_job_id": child.job_id,
                "name": child.loaded.spec.name,
                "generation": child.lineage.generation,
                "source": str(child.source),
            },
        )
        s.say(f"  spawned      {child.loaded.spec.name} ({child.job_id}), generation {child.lineage.generation}")
