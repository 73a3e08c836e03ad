"""The manifest's content: the in-toto predicate about a job, and its markdown summary."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from longrun.evidence.layout import GATE_SUMMARY_KEYS, WAIVER_MEMBER
from longrun.journal.events import Event, format_ts
from longrun.journal.payloads import GateEvaluated
from longrun.journal.state import RunState

# ------------------------------------------------------------------ predicate


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _gate_summary(gate: GateEvaluated) -> dict[str, Any]:
    evidence = gate.evidence
    out: dict[str, Any] = {"kind": gate.kind, "required": gate.required, "passed": gate.passed}
    summary = {k: evidence[k] for k in GATE_SUMMARY_KEYS if k in evidence}
    if summary:
        out["evidence"] = summary
    return out


def _approvals(events: Iterable[Event]) -> list[dict[str, Any]]:
    """APPROVED/REJECTED decisions in journal order (none when the journal has no such events)."""
    out = []
    for e in events:
        if e.type not in ("approved", "rejected"):
            continue
        p = e.payload.model_dump(mode="json")
        out.append(
            {
                "decision": e.type.upper(),
                "step": p.get("step"),
                "approver": p.get("approver"),
                "comment": p.get("comment"),
                "iteration": p.get("iteration"),
                "seq": e.seq,
                "ts": format_ts(e.ts),
            }
        )
    return out


def _waiver_summary(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        doc = json.loads(path.read_bytes())
    except ValueError:
        return {"member": WAIVER_MEMBER, "valid_json": False}
    fields = {k: doc.get(k) for k in ("reason", "expires_at", "approved_by")} if isinstance(doc, dict) else {}
    return {"member": WAIVER_MEMBER, "valid_json": isinstance(doc, dict), **fields}


def predicate(
    *,
    job_id: str,
    state: RunState,
    events: list[Event],
    spec_bytes: bytes,
    waiver: Path | None,
    created_at: str,
    bundle: dict[str, Any],
) -> dict[str, Any]:
    # spec.json is the stored spec (schema 2: {"spec_schema": 2, "spec": {...}}; schema 1: the bare spec) plus one newline.
    canonical = spec_bytes[:-1] if spec_bytes.endswith(b"\n") else spec_bytes
    try:
        doc = json.loads(canonical)
    except ValueError:
        doc = {}
    spec = doc.get("spec", {}) if isinstance(doc, dict) and "spec_schema" in doc else doc if isinstance(doc, dict) else {}
    per_iteration = {
        str(it): {name: _gate_summary(g) for name, g in sorted(gates.items())} for it, gates in sorted(state.gate_results.items())
    }
    last_it = max(state.gate_results) if state.gate_results else None
    last = per_iteration.get(str(last_it), {}) if last_it is not None else {}
    required = [g["passed"] for g in last.values() if g["required"]]
    skips = getattr(state, "gate_skips", None) or {}
    return {
        "job_id": job_id,
        "name": state.name or spec.get("name"),
        "spec_sha256": hashlib.sha256(canonical).hexdigest(),
        "mode": spec.get("mode"),
        "status": str(state.status),
        "stop_reason": state.stop_reason,
        "iterations": state.iterations_finished,
        "gates": {
            "last_iteration": last_it,
            "last": last,
            "required_passed": all(required) if required else None,
            "per_iteration": per_iteration,
            "skipped": {str(it): dict(g) for it, g in sorted(skips.items())},
        },
        "budget": {
            "usd": round(state.usd_total, 6),
            "tokens": state.tokens_total,
            "limits": spec.get("budgets") or {},
        },
        "approvals": _approvals(events),
        "waiver": _waiver_summary(waiver),
        "versions": {"longrun": _version("longrun"), "prefect": _version("prefect")},
        "runs": list(state.runs),
        "flow_run_ids": list(state.flow_run_ids),
        "built_from_seq": events[-1].seq,
        "created_at": created_at,
        "bundle": bundle,
    }


# ------------------------------------------------------------------ summary


def manifest_markdown(manifest: Mapping[str, Any]) -> str:
    """A short markdown summary of a manifest (for a Prefect markdown artifact)."""
    p = manifest.get("predicate", {})
    bundle = p.get("bundle", {})
    budget = p.get("budget", {})
    gates = p.get("gates", {})
    lines = [
        f"# Evidence — {p.get('name')} (`{p.get('job_id')}`)",
        "",
        f"- status: **{p.get('status')}**"
        + (f" ({p['stop_reason']})" if p.get("stop_reason") else "")
        + f" after {p.get('iterations', 0)} iteration(s)",
        f"- bundle: `{bundle.get('name')}`, {bundle.get('size', 0):,} bytes, sha256 `{bundle.get('sha256')}`",
        f"- files: {len(manifest.get('subject', []))}; spec sha256 `{p.get('spec_sha256')}`",
        f"- spend: ${budget.get('usd', 0):.4f}, {budget.get('tokens', 0):,} tokens",
        f"- built from journal seq {p.get('built_from_seq')} at {p.get('created_at')}",
    ]
    last = gates.get("last") or {}
    if last:
        lines += [
            "",
            f"## Gates (iteration {gates.get('last_iteration')})",
            "",
            "| gate | kind | required | result |",
            "|---|---|---|---|",
        ]
        for name, g in sorted(last.items()):
            lines.append(
                f"| {name} | {g.get('kind')} | {'yes' if g.get('required') else 'no'} | {'PASS' if g.get('passed') else 'FAIL'} |"
            )
    approvals = p.get("approvals") or []
    if approvals:
        lines += ["", "## Approvals", ""]
        lines += [f"- {a.get('decision')} `{a.get('step')}` by {a.get('approver')} at {a.get('ts')}" for a in approvals]
    if p.get("waiver"):
        w = p["waiver"]
        lines += ["", f"Waiver: {w.get('reason')!s} (approved by {w.get('approved_by')}, expires {w.get('expires_at')})"]
    lines += ["", f"Verify: `longrun verify {p.get('job_id')}`"]
    return "\n".join(lines) + "\n"
