"""Scope guard (SPEC G4): changes stay inside ``scope_paths``; spec paths stay under the root.

* :func:`scope_violations` — which changed paths fall outside the scope;
* :func:`changed_since` — what changed in a workspace since a tree snapshot
  (modified, added, deleted and untracked files; not ignored ones);
* :func:`scope_gate` — the ``(passed, evidence)`` of a scope gate over a diff;
* :func:`check_spec_paths` — every path a spec names, resolved with
  :func:`longrun.storage.paths.safe_join`; each one that leaves its base (``..``,
  absolute, or a symlink leading outside) is a ``path_escape`` problem.

Paths are workspace-relative POSIX paths, as git prints them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from longrun.errors import LongrunError, PathEscape
from longrun.spec.models import JobSpec
from longrun.storage.paths import MAESTRO, safe_join
from longrun.workspace import gitutil

__all__ = ["changed_since", "check_spec_paths", "ensure_in_scope", "scope_gate", "scope_violations"]


def _norm(path: str) -> str:
    """``./src//a.py`` → ``src/a.py``; ``.`` and ``./`` → ``.``."""
    parts = [p for p in PurePosixPath(path.replace("\\", "/")).parts if p not in ("", ".")]
    return "/".join(parts) or "."


def _in_scope(path: str, scopes: list[str]) -> bool:
    return any(s == "." or path == s or path.startswith(s + "/") for s in scopes)


def scope_violations(changed: Iterable[str], scope_paths: list[str]) -> list[str]:
    """The changed paths outside every scope path (sorted, unique).

    A path is in scope when it equals a scope path or lies under it
    (``src`` covers ``src/a.py`` but not ``srcx/a.py``); ``.`` covers
    everything. Paths under ``.maestro/`` (longrun's own files) are ignored.
    """
    scopes = [_norm(s) for s in scope_paths]
    out = set()
    for raw in changed:
        path = _norm(raw)
        if path == MAESTRO or path.startswith(MAESTRO + "/"):
            continue
        if not _in_scope(path, scopes):
            out.add(path)
    return sorted(out)


def changed_since(workspace: Path, start_tree: str) -> list[str]:
    """Paths changed in ``workspace`` since the tree ``start_tree`` (untracked files included)."""
    end_tree = gitutil.snapshot_tree(Path(workspace))
    return gitutil.changed_paths(Path(workspace), start_tree, end_tree)


def scope_gate(changed: Iterable[str], scope_paths: list[str]) -> tuple[bool, dict[str, Any]]:
    """A scope gate's verdict and evidence over one iteration's changed paths."""
    violations = scope_violations(changed, scope_paths)
    return not violations, {"scope_paths": list(scope_paths), "violations": violations}


def ensure_in_scope(changed: Iterable[str], scope_paths: list[str]) -> None:
    """Raise ``scope_violation`` naming the paths outside ``scope_paths``, if any."""
    violations = scope_violations(changed, scope_paths)
    if violations:
        shown = ", ".join(violations[:20]) + (f" (+{len(violations) - 20} more)" if len(violations) > 20 else "")
        raise LongrunError(
            f"{len(violations)} changed path(s) outside scope_paths {list(scope_paths)}: {shown}",
            code="scope_violation",
        )


def check_spec_paths(spec: JobSpec, root: Path) -> list[str]:
    """Resolve every path ``spec`` names; return one ``path_escape: …`` line per escape.

    Checked: ``workspace.path`` and ``stop_conditions.stop_file`` against the
    job root; ``scope_paths``, ``plan_file``, ``artifact_exists`` paths and
    ``test_pass`` ``junit_xml`` against the workspace. (``workspace.template``
    is relative to the spec file and checked when the workspace is created.)
    Paths need not exist; existing symlinks on the way are followed.
    """
    root = Path(root)
    problems: list[str] = []

    def check(base: Path, rel: str, what: str) -> Path | None:
        try:
            return safe_join(base, rel, what=what)
        except PathEscape as exc:
            problems.append(f"{exc.code}: {exc.message}")
            return None

    check(root, spec.stop_conditions.stop_file, "stop_conditions.stop_file")
    workspace = check(root, spec.workspace.path, "workspace.path")
    if workspace is None:
        return problems  # nothing below can be placed
    for i, scope in enumerate(spec.scope_paths):
        check(workspace, scope, f"scope_paths[{i}]")
    if spec.plan_file is not None:
        check(workspace, spec.plan_file, "plan_file")
    for group in ("required", "optional"):
        for i, gate in enumerate(getattr(spec.quality_gates, group)):
            where = f"quality_gates.{group}[{i}]"
            if gate.kind == "artifact_exists":
                check(workspace, gate.path, f"{where}.path")
            elif gate.kind == "test_pass" and gate.junit_xml is not None:
                check(workspace, gate.junit_xml, f"{where}.junit_xml")
    return problems
