"""Checks that span fields of a spec: unique ids, known ``depends_on``, allowed tools, no cycles.

They run on raw data (tolerant of malformed input), so the loader can report
every problem at once even when field validation failed, and on a validated
spec from :class:`longrun.spec.models.JobSpec`'s own validator.
"""

from __future__ import annotations

from typing import Any

from longrun.spec.agents import AGENT_EXECUTABLES


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _as_dict(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


_SHELL_REFUSED = "shell: true runs whatever program its script names; set allow_shell: true to allow it"


def cross_check(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Checks that span fields: unique ids, known ``depends_on``, allowed tools, no cycles.

    Tolerant of malformed input, so the loader can run it on raw data even when
    field validation failed and still report every problem at once.
    """
    errors: list[tuple[str, str]] = []
    stages = _as_list(data.get("stages"))
    tools = data.get("allowed_tools")
    allowed = {t for t in tools if isinstance(t, str)} if isinstance(tools, list) else None

    allow_shell = data.get("allow_shell") is True

    def argv0_refused(item: dict) -> str | None:
        run = item.get("run")
        if allowed is None or not isinstance(run, list) or not run or not isinstance(run[0], str):
            return None
        agent = item.get("agent")
        preset = AGENT_EXECUTABLES.get(agent) if isinstance(agent, str) else None
        if run[0] in allowed or run[0] == preset or (item.get("shell") is True and "sh" in allowed):
            return None
        return f"{run[0]!r} is not in allowed_tools {sorted(allowed)}"

    seen: dict[str, int] = {}
    for i, st in enumerate(stages):
        if not isinstance(st, dict) or not isinstance(st.get("id"), str):
            continue
        if st["id"] in seen:
            errors.append((f"stages[{i}].id", f"duplicate stage id {st['id']!r} (first at stages[{seen[st['id']]}])"))
        else:
            seen[st["id"]] = i
    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            continue
        deps = _as_list(st.get("depends_on"))
        for j, dep in enumerate(deps):
            if not isinstance(dep, str):
                continue  # the field validation reports it
            if dep not in seen:
                errors.append((f"stages[{i}].depends_on[{j}]", f"unknown stage {dep!r}"))
            elif dep == st.get("id"):
                errors.append((f"stages[{i}].depends_on[{j}]", "a stage cannot depend on itself"))
        if (why := argv0_refused(st)) is not None:
            errors.append((f"stages[{i}].run[0]", why))
        if st.get("shell") is True and not allow_shell:
            errors.append((f"stages[{i}].shell", _SHELL_REFUSED))
    gates = _as_dict(data.get("quality_gates"))
    gate_ids: dict[str, str] = {}
    for group in ("required", "optional"):
        items = _as_list(gates.get(group))
        for i, g in enumerate(items):
            if not isinstance(g, dict):
                continue
            where = f"quality_gates.{group}[{i}]"
            gid = g.get("id")
            if isinstance(gid, str):
                if gid in gate_ids:
                    errors.append((f"{where}.id", f"duplicate gate id {gid!r} (first at {gate_ids[gid]})"))
                gate_ids.setdefault(gid, where)
            if (why := argv0_refused(g)) is not None:
                errors.append((f"{where}.run[0]", why))
            if g.get("shell") is True and not allow_shell:
                errors.append((f"{where}.shell", _SHELL_REFUSED))
    approvals = _as_list(data.get("approvals"))
    for i, a in enumerate(approvals):
        if isinstance(a, dict) and isinstance(a.get("before"), str) and a["before"] not in seen:
            errors.append((f"approvals[{i}].before", f"unknown stage {a['before']!r}"))
        if isinstance(a, dict) and isinstance(a.get("escalate"), str):
            if (why := _not_escalating(data, gates, a["escalate"])) is not None:
                errors.append((f"approvals[{i}].escalate", why))
    workspace = _as_dict(data.get("workspace"))
    if workspace.get("repo") is not None and data.get("isolation") == "worktree":
        errors.append(
            ("isolation", "isolation: worktree does not go with workspace.repo (a cloned workspace is already the job's own)")
        )
    if not errors:
        _check_acyclic(stages, errors)
    return errors


def _not_escalating(data: dict, gates: dict, gate_id: str) -> str | None:
    """Why ``gate_id`` cannot be escalated (None: it is a required gate whose on_failure escalates)."""
    required = _as_list(gates.get("required"))
    gate = next((g for g in required if isinstance(g, dict) and g.get("id") == gate_id), None)
    if gate is None:
        return f"unknown required gate {gate_id!r}"
    policy = gate.get("on_failure") if isinstance(gate.get("on_failure"), dict) else data.get("on_failure")
    action = policy.get("action", "retry") if isinstance(policy, dict) else "retry"
    if action != "escalate":
        return f"gate {gate_id!r} does not escalate (its on_failure action is {action!r})"
    return None


def _check_acyclic(stages: list, errors: list[tuple[str, str]]) -> None:
    deps = {
        s["id"]: [d for d in _as_list(s.get("depends_on")) if isinstance(d, str)]
        for s in stages
        if isinstance(s, dict) and isinstance(s.get("id"), str)
    }
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 2 or node not in deps:
            return
        if state.get(node) == 1:
            cycle = trail[trail.index(node) :] + [node]
            errors.append(("stages", f"depends_on cycle {' -> '.join(cycle)}"))
            return
        state[node] = 1
        for d in deps[node]:
            visit(d, trail + [node])
        state[node] = 2

    for node in deps:
        if state.get(node) != 2:
            visit(node, [])
