"""``longrun apply`` (a worktree job's patches, with ``git am``) and ``longrun prune`` (retention)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from longrun.cli.common import EXIT_OK, Out, job_root
from longrun.errors import LongrunError

__all__ = ["PARSERS", "cmd_apply", "cmd_prune"]


def cmd_apply(args: argparse.Namespace, out: Out) -> int:
    """Apply the patches a worktree-isolated job exported, only through ``git am``."""
    from longrun.execution.runtime import JobRuntime
    from longrun.journal.registry import find_job
    from longrun.workspace import worktree

    root = job_root(args)
    record = find_job(root, args.job)
    loaded = record.load()
    if loaded.spec.isolation != "worktree":
        raise LongrunError(
            f"{record.name} does not run with isolation: worktree; there is nothing to apply", code="apply_nothing"
        )
    state = record.state()
    if state.status != "COMPLETED":
        raise LongrunError(
            f"{record.name} is {state.status}; patches are applied only from a COMPLETED job", code="apply_nothing"
        )
    rt = JobRuntime(loaded=loaded, root=root, run_id="apply")
    if (done := state.patches_applied) is not None:
        # Applying again would be a silent no-op in git (the commits are there): say so.
        out.emit(
            f"{record.name} ({record.job_id}): {len(done['patches'])} patch(es) were already applied to {done['repo']} "
            f"at {done['ts']} (HEAD {done['head'][:12]}); nothing to do",
            {"job_id": record.job_id, "patches": list(done["patches"]), "head": done["head"], "already_applied": True},
        )
        return EXIT_OK
    patches = sorted((rt.paths.checkpoints / "patches").glob("*.patch"))
    if not patches:
        raise LongrunError(f"no exported patches under {rt.paths.checkpoints / 'patches'}", code="apply_nothing")
    new_head = worktree.apply_patches(rt.repo, patches)
    record.journal.append(
        "patches_applied", {"repo": str(rt.repo), "patches": [p.name for p in patches], "head": new_head}, job_id=record.job_id
    )
    worktree.remove_worktree(rt.repo, rt.worktree_dir, branch_too=True)
    worktree.delete_branch(rt.repo, record.job_id)
    out.emit(
        f"applied {len(patches)} patch(es) to {rt.repo} with git am; HEAD is now {new_head[:12]}",
        {"job_id": record.job_id, "patches": [p.name for p in patches], "head": new_head, "already_applied": False},
    )
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, out: Out) -> int:
    """Retention: old checkpoints of finished jobs (kept in their evidence bundles) and worktrees."""
    from datetime import UTC, datetime

    from longrun.evidence.prune import parse_age, prune_job
    from longrun.journal.registry import find_job, list_jobs

    root = job_root(args)
    older_than = parse_age(args.older_than)
    records = [find_job(root, ref) for ref in args.jobs] if args.jobs else list_jobs(root)
    now = datetime.now(UTC)
    results = [
        prune_job(r, root, older_than=older_than, keep_last=args.keep_last, now=now, dry_run=args.dry_run, by=args.by)
        for r in records
    ]
    if out.json:
        print(json.dumps({"dry_run": args.dry_run, "jobs": [r.to_dict() for r in results]}, sort_keys=True))
    elif not results:
        print("no jobs under " + str(root))
    else:
        for r in results:
            print(r.line())
    return EXIT_OK


def _add_apply(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("apply", parents=[common], help="apply a worktree job's patches to the main tree with git am")
    s.add_argument("job", metavar="JOB")
    s.set_defaults(fn=cmd_apply)


def _add_prune(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "prune",
        parents=[common],
        help="free disk: old checkpoints of finished jobs (their evidence bundle keeps them) and worktrees; never an active job",
    )
    s.add_argument("jobs", nargs="*", metavar="JOB", help="jobs to prune (default: every job under the root)")
    s.add_argument(
        "--older-than",
        default="7d",
        metavar="AGE",
        help="only jobs whose last event is at least this old: 30m, 12h, 7d, 0 (default 7d)",
    )
    s.add_argument(
        "--keep-last", type=int, default=1, metavar="N", help="keep the checkpoints of the last N iterations (default 1)"
    )
    s.add_argument("--dry-run", action="store_true", help="report what would be removed; remove nothing")
    s.add_argument("--by", default=None, help="who prunes (journaled)")
    s.set_defaults(fn=cmd_prune)


#: Command name → the function that adds its subparser (``longrun.cli.main`` orders them).
PARSERS = {"apply": _add_apply, "prune": _add_prune}
