"""Lineage of spawned jobs (SPEC S4) and their spend against the root's budget.

A job may spawn children by writing job specs into a spawn directory.
:func:`collect_children` loads each one, stamps its lineage
(``root_job_id``, ``parent_job_id``, ``generation = parent's + 1``) and so
gives it its own deterministic job id: the lineage is part of the canonical
spec, so the same file spawned by two parents yields two jobs. Any lineage
written in the file is replaced — a child cannot claim another root to escape
that root's budget. A root job has no lineage and generation 0.

:func:`spend_for_root` sums the journaled spend of every job of one lineage,
so a root's budget can count its descendants' spend
(``BudgetGovernor.check(..., lineage_usd=..., lineage_tokens=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from longrun.errors import LongrunError, Problem, SpecError
from longrun.journal.fold import apply
from longrun.journal.local import Journal
from longrun.journal.registry import JobRecord, list_jobs
from longrun.journal.state import RunState
from longrun.spec.loader import LoadedSpec, canonical_json, job_id_for, load_spec, validate_spec_data
from longrun.spec.models import Lineage
from longrun.storage.paths import JOB_ID_RE, JobPaths, check_job_id, jobs_dir, safe_join

__all__ = [
    "DEFAULT_MAX_GENERATION",
    "SPEC_SUFFIXES",
    "ChildSpec",
    "LineageSpend",
    "collect_children",
    "lineage_of",
    "spend_for_root",
]

DEFAULT_MAX_GENERATION = 3
SPEC_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class ChildSpec:
    """A spawned job: its file, its loaded spec (lineage set, id recomputed) and its lineage."""

    source: Path
    loaded: LoadedSpec
    lineage: Lineage

    @property
    def job_id(self) -> str:
        return self.loaded.job_id


def lineage_of(loaded: LoadedSpec) -> tuple[str, int]:
    """``(root_job_id, generation)`` of a job: its own id and 0 for a root job."""
    lin = loaded.spec.lineage
    return (loaded.job_id, 0) if lin is None else (lin.root_job_id, lin.generation)


def collect_children(
    spawn_dir: Path,
    parent: LoadedSpec | str,
    root_job_id: str | None = None,
    generation: int | None = None,
    max_generation: int = DEFAULT_MAX_GENERATION,
) -> list[ChildSpec]:
    """Load every ``*.yaml``/``*.yml``/``*.json`` in ``spawn_dir`` as a child of ``parent``.

    ``parent`` is the parent's loaded spec (its lineage gives ``root_job_id``
    and ``generation`` when they are not passed) or its job id (then pass
    both; a root parent has ``root_job_id == parent`` and ``generation == 0``).
    Children get generation ``generation + 1``; beyond ``max_generation`` they
    are refused with ``lineage_too_deep`` before any file is read. Every spec
    problem of every file is reported at once as one ``SpecError`` naming the
    files. Returns the children sorted by file name; an absent directory has none.
    """
    if isinstance(parent, LoadedSpec):
        parent_id = parent.job_id
        own_root, own_generation = lineage_of(parent)
        root_job_id = root_job_id if root_job_id is not None else own_root
        generation = generation if generation is not None else own_generation
    else:
        parent_id = parent
        if root_job_id is None or generation is None:
            raise TypeError("collect_children: pass root_job_id and generation with a parent job id")
    check_job_id(parent_id)
    check_job_id(root_job_id)
    child_generation = generation + 1
    spawn_dir = Path(spawn_dir)
    files = sorted(p for p in (spawn_dir.iterdir() if spawn_dir.is_dir() else ()) if p.suffix in SPEC_SUFFIXES and not p.is_dir())
    if files and child_generation > max_generation:
        raise LongrunError(
            f"job {parent_id} (generation {generation}) cannot spawn {len(files)} job(s): generation "
            f"{child_generation} exceeds max_generation {max_generation}",
            code="lineage_too_deep",
        )
    lineage = Lineage(root_job_id=root_job_id, parent_job_id=parent_id, generation=child_generation)
    children: list[ChildSpec] = []
    problems: list[Problem] = []
    for file in files:
        try:
            safe_join(spawn_dir, file.name, what="spawned spec")
            loaded = load_spec(file)
            data = {**loaded.spec.model_dump(mode="json"), "lineage": lineage.model_dump(mode="json")}
            spec = validate_spec_data(data, file=str(file))
        except SpecError as exc:
            problems += [p if p.file else Problem(p.path, p.message, str(file)) for p in exc.problems]
            continue
        except LongrunError as exc:  # path_escape (a symlink out of the directory), job_not_found (unreadable)
            problems.append(Problem("$", exc.message, str(file)))
            continue
        child = LoadedSpec(spec=spec, source=loaded.source, job_id=job_id_for(spec), canonical=canonical_json(spec))
        children.append(ChildSpec(source=file, loaded=child, lineage=lineage))
    if problems:
        raise SpecError(problems, file=str(spawn_dir))
    return children


def spend_for_root(root_dir: Path, root_job_id: str, *, include_root: bool = True) -> tuple[float, int]:
    """``(usd, tokens)`` journaled by every job under ``root_dir`` whose lineage root is ``root_job_id``.

    With ``include_root`` the root job's own spend is counted too (the whole
    tree). To charge descendants to the root's own budget, pass
    ``include_root=False`` and hand the result to the governor as
    ``lineage_usd`` / ``lineage_tokens`` (the root's own spend is already in
    its state).
    """
    check_job_id(root_job_id)
    usd, tokens = 0.0, 0
    for record in list_jobs(Path(root_dir)):
        if record.job_id == root_job_id:
            if not include_root:
                continue
        else:
            lin = record.load().spec.lineage
            if lin is None or lin.root_job_id != root_job_id:
                continue
        state = record.state()
        usd += state.usd_total
        tokens += state.tokens_total
    return round(usd, 9), tokens


class LineageSpend:
    """The spend of a root job's descendants, kept up to date incrementally.

    :func:`spend_for_root` replays every journal; a running root checks its
    budget before every stage, so this keeps one folded state per descendant
    and reads only what each journal gained since the last check (and looks
    at a newly registered job's spec once).
    """

    def __init__(self, root_dir: Path, root_job_id: str) -> None:
        self.root_dir = Path(root_dir)
        self.root_job_id = check_job_id(root_job_id)
        self._seen: set[str] = {root_job_id}
        self._journals: dict[str, Journal] = {}
        self._states: dict[str, RunState] = {}

    def __call__(self) -> tuple[float, int]:
        base = jobs_dir(self.root_dir)
        if base.is_dir():
            for d in base.iterdir():
                if d.name in self._seen or not JOB_ID_RE.match(d.name) or not (d / "spec.json").exists():
                    continue
                self._seen.add(d.name)
                lin = JobRecord(d.name, d.name, JobPaths(self.root_dir, d.name)).load().spec.lineage
                if lin is not None and lin.root_job_id == self.root_job_id:
                    self._journals[d.name] = Journal(JobPaths(self.root_dir, d.name).events_file)
                    self._states[d.name] = RunState()
        usd, tokens = 0.0, 0
        for job_id, journal in self._journals.items():
            state = self._states[job_id]
            for event in journal.tail():
                state = apply(state, event)
            self._states[job_id] = state
            usd += state.usd_total
            tokens += state.tokens_total
        return round(usd, 9), tokens
