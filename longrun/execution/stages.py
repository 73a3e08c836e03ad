"""Run one lifecycle stage under the stage contract (SPEC E2, E3).

A stage is an argv run in the job's workspace, under a timeout that kills its
whole process group, with its output streamed into the iteration's
``command.log``. Its environment names the job, run, iteration, stage, phase,
the model routed to that phase, the goal, the checkpoint directory and a
usage file where it reports ``{"usd", "tokens", "model"}``. Its argv[0] must
be in ``allowed_tools`` (or be its agent preset's executable); otherwise it is
refused before anything runs.

A stage with a usage ``format`` (or an agent preset) has its usage read from
its own output (:mod:`longrun.execution.agent_usage`); a tool that reports
tokens but no USD is priced from the price table (:mod:`longrun.execution.pricing`).
A rate limit in the output makes the result carry ``rate_limit``; the engine
then waits for the reset instead of counting the attempt as work.
"""

from __future__ import annotations

import re
import shlex
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from longrun import atomicio
from longrun.errors import LongrunError, ToolNotAllowed
from longrun.execution.agent_usage import AgentUsage, read_agent_usage
from longrun.execution.checkpoint import RateLimitRecord, StageResult, UsageRecord
from longrun.execution.pricing import TokenCounts, compute_usd
from longrun.execution.process import CommandResult, kill_stale_group, read_usage_file, run_command, scan_log
from longrun.execution.prompt import stage_prompt
from longrun.execution.runtime import JobRuntime
from longrun.spec.compile import PlannedStage

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def check_tool(
    rt: JobRuntime, argv: tuple[str, ...] | list[str], shell: bool, where: str, preset_tool: str | None = None
) -> None:
    allowed = set(rt.spec.allowed_tools)
    if shell and not rt.spec.allow_shell:
        raise ToolNotAllowed(f"{where}: shell: true needs allow_shell: true in the spec; nothing was run")
    if argv[0] in allowed or argv[0] == preset_tool or (shell and "sh" in allowed):
        return
    raise ToolNotAllowed(f"{where}: {argv[0]!r} is not in allowed_tools {sorted(allowed)}; nothing was run")


def expand_argv(argv: tuple[str, ...] | list[str], values: dict[str, str], *, shell: bool = False) -> list[str]:
    """Substitute the fixed placeholders (``{junit_xml}``, ``{prompt}`` …) in one pass; nothing else is expanded.

    A substituted value is not scanned again, so a prompt that contains
    ``{workspace}`` reaches the agent as written. With ``shell`` a value that
    lands in shell script text (``run[1]`` of ``[sh|bash, script, ...]``) goes in
    quoted (``shlex.quote``), so it is one word however it is spelled; values in
    other elements stay separate argv elements (and ``build_argv`` quotes a
    joined script with ``shlex.join``).
    """
    script_index = 1 if shell and argv and argv[0] in ("sh", "bash") else None
    out = []
    for i, arg in enumerate(argv):
        quote = i == script_index

        def sub(m: re.Match[str], quote: bool = quote) -> str:
            value = values.get(m.group(1))
            if value is None:
                return m.group(0)
            return shlex.quote(value) if quote else value

        out.append(_PLACEHOLDER.sub(sub, arg))
    return out


def argv_values(rt: JobRuntime, iteration: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    values = {
        "job_id": rt.job_id,
        "iteration": str(iteration),
        "checkpoint_dir": str(rt.paths.iteration_dir(iteration).resolve()),
        "workspace": str(rt.workspace),
    }
    values.update(extra or {})
    return values


def run_stage(rt: JobRuntime, stage: PlannedStage, iteration: int, attempt: int) -> tuple[StageResult, CommandResult]:
    """Run one attempt of ``stage``. Never raises for a failing command."""
    check_tool(rt, stage.argv, stage.shell, f"stage {stage.id!r}", stage.preset_tool)
    it_dir = rt.paths.iteration_dir(iteration)
    usage_file = it_dir / "usage" / f"{stage.id}.json"
    atomicio.remove(usage_file)
    usage_file.parent.mkdir(parents=True, exist_ok=True)
    analytics_log = it_dir / "usage" / f"{stage.id}.analytics.jsonl"
    atomicio.remove(analytics_log)
    extra = {"model": stage.model, "analytics_log": str(analytics_log.resolve())}
    if stage.prompt_file is not None:
        extra["prompt"] = stage_prompt(rt, stage.prompt_file, iteration)
    spawn_dir = it_dir / "spawn"
    pid_file = it_dir / "running" / f"{stage.id}.pgid"
    # A stage orphaned by an engine that was SIGKILLed must not race its rerun.
    kill_stale_group(
        pid_file, match_env={"LONGRUN_JOB_ID": rt.job_id, "LONGRUN_STAGE": stage.id, "LONGRUN_ITERATION": str(iteration)}
    )
    argv = expand_argv(stage.argv, argv_values(rt, iteration, extra), shell=stage.shell)
    with tempfile.TemporaryDirectory(prefix="longrun-tmp-") as tmpdir:
        env = rt.base_env(
            iteration,
            extra=dict(stage.env),
            passthrough=stage.env_passthrough,
            extra_names=stage.extra_env_names,
            tmpdir=tmpdir,
        )
        env.update(
            {
                "LONGRUN_STAGE": stage.id,
                "LONGRUN_PHASE": stage.phase or "",
                "LONGRUN_MODEL": stage.model,
                "LONGRUN_ATTEMPT": str(attempt),
                "LONGRUN_USAGE_FILE": str(usage_file.resolve()),
                "LONGRUN_ANALYTICS_LOG": extra["analytics_log"],
            }
        )
        if rt.sandboxed:
            spawn_dir.mkdir(parents=True, exist_ok=True)  # a bind mount needs its directory
        result = run_command(
            argv,
            cwd=rt.workspace,
            env=env,
            timeout=stage.timeout,
            log_path=it_dir / "command.log",
            shell=stage.shell,
            header=f"stage {stage.id} #{iteration} attempt {attempt}",
            pid_file=pid_file,
            sandbox=rt.sandbox_plan(iteration, (usage_file.parent, spawn_dir, Path(tmpdir))),
        )
    if stage.usage_format is not None:
        log = analytics_log if stage.usage_format == "aider-analytics" else it_dir / "command.log"
        usage, rate_limit = _agent_usage(rt, stage, log, result)
    else:
        usage, rate_limit = _usage(rt, stage, usage_file, it_dir / "command.log", result), None
    record = StageResult(
        job_id=rt.job_id,
        iteration=iteration,
        stage=stage.id,
        phase=stage.phase,
        model=stage.model,
        argv=argv,
        exit_code=result.exit_code,
        timed_out=result.timed_out,
        duration_s=round(result.duration_s, 3),
        attempts=attempt,
        usage=usage,
        error=result.error,
        rate_limit=rate_limit,
    )
    return record, result


def _agent_usage(
    rt: JobRuntime, stage: PlannedStage, log: Path, result: CommandResult
) -> tuple[UsageRecord, RateLimitRecord | None]:
    """Usage from the stage's output in its agent format, priced when the tool reports no USD."""
    fmt = stage.usage_format or ""
    source = f"stage {stage.id!r} ({fmt})"
    now = datetime.now(UTC)
    if fmt == "aider-analytics":
        found = read_agent_usage(fmt, log, now=now, source=source) if log.exists() else AgentUsage()
    else:
        cut = result.timed_out or (result.exit_code is not None and result.exit_code < 0)
        found = read_agent_usage(fmt, log, result.log_offset_start, result.log_offset_end, now=now, source=source, cut=cut)
    rate_limit = None
    if found.rate_limit is not None:
        rl = found.rate_limit
        rate_limit = RateLimitRecord(resets_at=rl.resets_at, kind=rl.kind, message=rl.message)
    capture = rt.spec.stage(stage.id).usage
    if not found.found:
        if capture is not None and capture.required and rate_limit is None:
            raise LongrunError(
                f"{source}: the output holds no usage record (exit {result.exit_code}); usage.required is set",
                code="usage_missing",
            )
        return UsageRecord(model=stage.model, usd_source="none", format=fmt), rate_limit
    model = found.model or stage.model
    prices_version = None
    source_kind: Literal["reported", "computed"] = "reported"
    if found.usd is not None:
        usd = found.usd
    else:
        usd, prices_version = _price(model, found, rt)
        source_kind = "computed"
    record = UsageRecord(
        usd=usd,
        tokens=found.tokens,
        model=model,
        input_tokens=found.input_tokens,
        output_tokens=found.output_tokens,
        cache_read_tokens=found.cache_read_tokens,
        cache_write_tokens=found.cache_write_tokens,
        usd_source=source_kind,
        prices_version=prices_version,
        format=fmt,
    )
    return record, rate_limit


def _price(model: str, found: AgentUsage, rt: JobRuntime) -> tuple[float, str]:
    """USD of token-only usage: each reported model at its own price; the versions that priced it."""
    parts = found.by_model or {
        model: (found.input_tokens, found.output_tokens, found.cache_read_tokens, found.cache_write_tokens)
    }
    usd, versions = 0.0, set()
    for name, (i, o, cr, cw) in parts.items():
        part, version = compute_usd(name, TokenCounts(i, o, cr, cw), rt.spec.model_prices)
        usd += part
        versions.add(version)
    return round(usd, 9), "+".join(sorted(versions))


def _usage(rt: JobRuntime, stage: PlannedStage, usage_file: Path, log: Path, result: CommandResult) -> UsageRecord:
    reported = read_usage_file(usage_file)
    usd, tokens, model = reported.usd, reported.tokens, reported.model
    capture = rt.spec.stage(stage.id).usage
    if capture is not None:
        if capture.usd_regex and (
            m := scan_log(log, result.log_offset_start, result.log_offset_end, re.compile(capture.usd_regex))
        ):
            usd = _number(m, "usd_regex", stage.id)
        if capture.tokens_regex and (
            m := scan_log(log, result.log_offset_start, result.log_offset_end, re.compile(capture.tokens_regex))
        ):
            tokens = int(_number(m, "tokens_regex", stage.id))
    return UsageRecord(usd=usd, tokens=tokens, model=model or stage.model)


def _number(text: str, what: str, stage_id: str) -> float:
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise LongrunError(f"stage {stage_id!r}: {what} captured {text!r}, which is not a number", code="usage_invalid") from None
    if value < 0 or value != value or value == float("inf"):
        raise LongrunError(
            f"stage {stage_id!r}: {what} captured {text!r}; usage must be a finite number >= 0", code="usage_invalid"
        )
    return value


def should_retry(stage: PlannedStage, record: StageResult) -> bool:
    """Whether this attempt's outcome is one the stage's retry policy retries."""
    if record.timed_out:
        return "timeout" in stage.retry.when
    return record.exit_code != 0 and "nonzero" in stage.retry.when
