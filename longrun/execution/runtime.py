"""Everything a running job needs to know about itself, in one frozen object.

Built once per flow run from the canonical spec and the job root; stages,
gates and checkpoints take it instead of loose parameters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from longrun.spec.compile import ExecutionPlan, compile_spec
from longrun.spec.loader import LoadedSpec
from longrun.spec.models import JobSpec
from longrun.storage.paths import JobPaths, safe_join


@dataclass(frozen=True)
class JobRuntime:
    loaded: LoadedSpec
    root: Path
    run_id: str
    #: Where stages run when it is not the spec's workspace (``isolation: worktree``).
    workdir: Path | None = None

    @property
    def spec(self) -> JobSpec:
        return self.loaded.spec

    @property
    def job_id(self) -> str:
        return self.loaded.job_id

    @property
    def paths(self) -> JobPaths:
        return JobPaths(self.root, self.job_id)

    @property
    def plan(self) -> ExecutionPlan:
        return compile_spec(self.spec)

    @property
    def repo(self) -> Path:
        """The spec's workspace: the main tree."""
        return safe_join(self.root, self.spec.workspace.path, what="workspace.path")

    @property
    def workspace(self) -> Path:
        """Where stages and gates run: the worktree under isolation, else the main tree."""
        return self.workdir if self.workdir is not None else self.repo

    @property
    def worktree_dir(self) -> Path:
        return self.paths.worktree_dir

    @property
    def stop_files(self) -> tuple[Path, ...]:
        """The spec's stop file (root-relative) and the per-job one ``longrun stop`` creates."""
        return (safe_join(self.root, self.spec.stop_conditions.stop_file, what="stop_file"), self.paths.job_stop_file)

    def plan_file(self) -> Path | None:
        if self.spec.plan_file is None:
            return None
        return safe_join(self.workspace, self.spec.plan_file, what="plan_file")

    def base_env(self, iteration: int, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment every stage and gate command gets (SPEC E2).

        ``extra`` (the spec's ``env``) goes in before the ``LONGRUN_*``
        variables, so it can never override them.
        """
        prev = self.paths.iteration_dir(iteration - 1) if iteration > 1 else None
        env = dict(os.environ)
        env.update(extra or {})
        env.update(
            {
                "LONGRUN_JOB_ID": self.job_id,
                "LONGRUN_JOB_NAME": self.spec.name,
                "LONGRUN_RUN_ID": self.run_id,
                "LONGRUN_ITERATION": str(iteration),
                "LONGRUN_GOAL": self.spec.goal,
                "LONGRUN_WORKSPACE": str(self.workspace),
                "LONGRUN_CHECKPOINT_DIR": str(self.paths.iteration_dir(iteration).resolve()),
                "LONGRUN_PREV_CHECKPOINT_DIR": str(prev.resolve()) if prev is not None else "",
                "LONGRUN_SPAWN_DIR": str((self.paths.iteration_dir(iteration) / "spawn").resolve()),
            }
        )
        if self.spec.plan_file is not None:
            env["LONGRUN_PLAN_FILE"] = self.spec.plan_file
        return env
