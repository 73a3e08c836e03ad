"""Checks before a job runs: paths, workspace, template, evidence store.

Shared by the CLI (before Prefect starts), ``deploy`` and the flow, so a
deployment run refuses the same things ``longrun run`` does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from longrun.errors import EvidenceStoreInvalid, LongrunError, PathEscape
from longrun.execution.runtime import JobRuntime
from longrun.execution.sandbox import check_bwrap
from longrun.governance.scope import check_spec_paths
from longrun.governance.waiver import Waiver, check_waiver, load_waiver
from longrun.journal.state import RunState
from longrun.spec.loader import LoadedSpec
from longrun.spec.models import JobSpec
from longrun.storage import check_store_ref, resolve_store
from longrun.storage.paths import JobPaths, safe_join
from longrun.workspace import gitutil, travel, worktree
from longrun.workspace.gitutil import GitTrees
from longrun.workspace.travel import Materialized


def preflight(loaded: LoadedSpec, root: Path, template_base: Path | None, *, probe_sandbox: bool = True) -> None:
    """Refuse bad input before anything runs: paths, workspace, template, evidence store.

    The CLI calls it before Prefect starts, and the flow before its run
    starts, so a deployment run refuses the same things ``longrun run`` does.
    Both call it only for a job that will run: a ``COMPLETED``/``REJECTED``
    job is reported as it is, whatever its workspace looks like now.
    ``template_base`` is the spec file's directory (None: the spec has no
    file, e.g. a resumed job). ``probe_sandbox=False`` (``deploy``: the
    stages will run on a worker, not here) skips the bubblewrap check; the
    flow makes it on the worker before its first stage.
    """
    problems = check_spec_paths(loaded.spec, root)
    if problems:
        raise PathEscape("; ".join(p.removeprefix("path_escape: ") for p in problems))
    check_store_ref(loaded.spec.evidence.store, root)
    check_sandbox(loaded.spec, root, probe=probe_sandbox)
    if loaded.spec.workspace.repo is not None:
        return  # cloned or checked against the journal when the run starts (GitWorkspace.materialize)
    workspace, template = _workspace_and_template(loaded, root, template_base)
    if template is not None:
        if not template.is_dir():
            raise LongrunError(f"workspace template {template} is not a directory", code="template_not_found")
        return
    if not gitutil.is_repo(workspace):
        raise LongrunError(f"workspace {workspace} is not a git repository (run `git init` there)", code="workspace_missing")
    if loaded.spec.isolation == "worktree":
        if not JobPaths(root, loaded.job_id).worktree_dir.exists() and worktree.is_dirty(workspace):
            raise LongrunError(
                f"workspace {workspace} has uncommitted changes; isolation: worktree starts only from a clean tree",
                code="workspace_dirty",
            )


def check_sandbox(spec: JobSpec, root: Path, now: datetime | None = None, *, probe: bool = True) -> Waiver | None:
    """Refuse a run whose sandbox cannot be had; return the waiver that lets ``sandbox: none`` run strict.

    Sandboxed (the default): ``bwrap`` must build a sandbox here, else
    ``sandbox_unavailable``, naming the package and the opt-out.
    ``sandbox: none`` in ``strict`` mode needs a valid, unexpired waiver
    (``.maestro/waivers/longrun.json``) present before the run starts, else
    ``sandbox_required``. Advisory ``sandbox: none`` runs as it is (the
    opt-out is journaled in ``run_started``).
    """
    if spec.sandbox != "none":
        if probe:
            check_bwrap()
        return None
    if spec.mode != "strict":
        return None
    try:
        waiver = load_waiver(root)
        if waiver is not None:
            return check_waiver(waiver, now or datetime.now(UTC))
        why = "no waiver"
    except LongrunError as exc:
        why = f"the waiver does not count ({exc.code}: {exc.message})"
    raise LongrunError(
        f"mode: strict refuses sandbox: none without a waiver, and there is {why}; remove `sandbox: none` "
        "or add a waiver (.maestro/waivers/longrun.json) before the run",
        code="sandbox_required",
    )


def ensure_workspace(loaded: LoadedSpec, root: Path, template_base: Path | None) -> Path:
    """The job's workspace; created from its template (as a new git repo) when absent."""
    workspace, template = _workspace_and_template(loaded, root, template_base)
    if template is not None:
        gitutil.init_from_template(template, workspace)
    return workspace


def _workspace_and_template(loaded: LoadedSpec, root: Path, template_base: Path | None) -> tuple[Path, Path | None]:
    """The workspace path, and the template to create it from (None: it exists)."""
    ws_cfg = loaded.spec.workspace
    workspace = safe_join(root, ws_cfg.path, what="workspace.path")
    if workspace.exists() or ws_cfg.repo is not None:
        return workspace, None
    if ws_cfg.template is None:
        raise LongrunError(f"workspace {workspace} does not exist and the spec names no template", code="workspace_missing")
    if template_base is None:
        raise LongrunError(
            f"workspace {workspace} does not exist; run the job from its spec file so the template can be found",
            code="workspace_missing",
        )
    return workspace, safe_join(template_base, ws_cfg.template, what="workspace.template")


class GitWorkspace(GitTrees):
    """The workspace port on a local git repository."""

    def prepare(self, rt: JobRuntime, template_base: Path | None) -> None:
        preflight(rt.loaded, rt.root, template_base)
        check_evidence_store(rt)
        ensure_workspace(rt.loaded, rt.root, template_base)
        # Again: a workspace created from a template may bring symlinks.
        problems = check_spec_paths(rt.spec, rt.root)
        if problems:
            raise PathEscape("; ".join(p.removeprefix("path_escape: ") for p in problems))

    def materialize(self, rt: JobRuntime, state: RunState) -> Materialized | None:
        ws_cfg = rt.spec.workspace
        if ws_cfg.repo is None:
            return None
        done = travel.materialize(rt.repo, ws_cfg.repo, ws_cfg.ref, state, rt.paths)
        # The clone may bring symlinks: the spec's paths must still resolve inside.
        problems = check_spec_paths(rt.spec, rt.root)
        if problems:
            raise PathEscape("; ".join(p.removeprefix("path_escape: ") for p in problems))
        return done

    def push(self, rt: JobRuntime, state: RunState, iteration: int, tree: str) -> str:
        ws_cfg = rt.spec.workspace
        if ws_cfg.repo is None or ws_cfg.push_branch is None or state.workspace_commit is None:
            raise LongrunError(
                "push needs workspace.repo, workspace.push_branch and a journaled base commit", code="workspace_push_failed"
            )
        parent = travel.push_parent(rt.repo, state, iteration, state.workspace_commit)
        message = f"longrun {rt.job_id}: iteration {iteration}\n\n{rt.spec.name}: {rt.spec.goal}"
        return travel.push_tree(rt.repo, ws_cfg.repo, ws_cfg.push_branch, tree, parent, message)

    def isolate(self, rt: JobRuntime) -> Path:
        return worktree.ensure_worktree(rt.repo, rt.job_id, rt.worktree_dir)


def check_evidence_store(rt: JobRuntime) -> None:
    """A store block that does not exist is bad input: refuse before any work, not after it.

    An error reaching it is not: the upload at the end retries, and journals it if it fails.
    """
    if rt.spec.evidence.store is None:
        return
    try:
        resolve_store(rt.spec.evidence.store, rt.root)
    except EvidenceStoreInvalid:
        raise
    except LongrunError:
        pass
