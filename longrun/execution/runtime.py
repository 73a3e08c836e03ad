"""Everything a running job needs to know about itself, in one frozen object.

Built once per flow run from the canonical spec and the job root; stages,
gates and checkpoints take it instead of loose parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from longrun.execution.environment import stage_environment
from longrun.execution.sandbox import SandboxPlan, find_bwrap
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

    @property
    def sandboxed(self) -> bool:
        """Whether stages and command gates run under bubblewrap (``sandbox`` is not ``none``)."""
        return self.spec.sandbox != "none"

    def base_env(
        self,
        iteration: int,
        extra: dict[str, str] | None = None,
        *,
        passthrough: tuple[str, ...] | list[str] = (),
        extra_names: tuple[str, ...] = (),
        tmpdir: str,
    ) -> dict[str, str]:
        """The environment every stage and gate command gets (SPEC E2).

        Not the engine's environment: the allowlist of
        :func:`~longrun.execution.environment.stage_environment`, the names
        the command (``passthrough``) and ``defaults.env_passthrough`` pass
        through, ``extra_names`` (names from other sources than the spec's
        lists, see ``PlannedStage.extra_env_names``), ``HOME`` (the per-job
        directory) and ``TMPDIR``, then ``extra`` (the spec's ``env``), then the
        ``LONGRUN_*`` variables, so nothing can override them.
        """
        prev = self.paths.iteration_dir(iteration - 1) if iteration > 1 else None
        home = self.paths.home_dir.resolve()
        home.mkdir(parents=True, exist_ok=True)
        env = stage_environment(
            extra or {},
            [*self.spec.defaults.env_passthrough, *passthrough],
            extra_names,
            home=str(home),
            tmpdir=tmpdir,
        )
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

    def sandbox_plan(self, iteration: int, writable: tuple[Path, ...]) -> SandboxPlan | None:
        """The sandbox of one command of ``iteration`` (None under ``sandbox: none``).

        The workspace, the per-job ``HOME`` and ``writable`` are writable; the
        iteration's checkpoint directory and the previous one are readable;
        the rest of ``.maestro/`` is hidden. Under worktree isolation the main
        repository's ``.git/objects``, ``refs``, ``logs`` and ``worktrees`` are
        writable too (a worktree's commits, branch and index live there); its
        ``config`` and ``hooks`` stay read-only.
        """
        sandbox = self.spec.sandbox
        if sandbox == "none":
            return None
        rw = [self.workspace.resolve(), self.paths.home_dir.resolve(), *(p.resolve() for p in writable)]
        git_dir = self.repo / ".git"
        if self.workdir is not None:  # objects, refs and the worktree's index; not config or hooks
            rw += [(git_dir / d).resolve() for d in ("objects", "refs", "logs", "worktrees") if (git_dir / d).is_dir()]
        readable = [self.paths.iteration_dir(iteration).resolve()]
        if iteration > 1:
            readable.append(self.paths.iteration_dir(iteration - 1).resolve())
        return SandboxPlan(
            writable=tuple(rw),
            hidden=(self.paths.maestro.resolve(),),
            read_only=tuple(readable),
            network=sandbox.network,
            bwrap=find_bwrap() or "bwrap",
        )
