"""The end of every run: worktree patches, the evidence bundle, strict mode (SPEC C3, G5)."""

from __future__ import annotations

from longrun.engine.session import Session
from longrun.evidence.publish import finalize_evidence
from longrun.governance.waiver import strict_report
from longrun.workspace import worktree


def finish(s: Session) -> None:
    rt = s.rt
    if rt.workdir is not None and s.state.status == "COMPLETED":
        out = rt.paths.checkpoints / "patches"
        patches = worktree.export_patches(rt.workdir, worktree.fork_point(rt.repo, rt.job_id), out)
        worktree.remove_worktree(rt.repo, rt.workdir)
        s.say(f"exported {len(patches)} patch(es) to {out}; apply with: longrun apply {rt.job_id}")
    outcome = finalize_evidence(
        rt.root, rt.job_id, rt.spec.evidence.store, s.ports.journal, signing_key=rt.spec.evidence.signing_key
    )
    s.sync()
    if outcome.upload_failed:
        s.say(
            f"evidence upload FAILED ({outcome.error}); the bundle is kept at {outcome.bundle.tar_path}; "
            f"retry with: longrun evidence push {rt.job_id}"
        )
    else:
        where = outcome.store_uri or str(outcome.bundle.tar_path)
        s.say(f"evidence: {where} (sha256 {outcome.bundle.sha256[:12]}…)")
    try:
        s.ports.progress.evidence(outcome)
    except Exception as exc:  # the UI link is a convenience; the bundle is the record
        s.say(f"  (could not publish the evidence artifact: {type(exc).__name__}: {exc})")
    if rt.spec.mode == "strict" and s.state.status == "COMPLETED":
        report = strict_report(rt.root, rt.job_id, s.state, rt.spec, s.now())
        if report.ok:
            waived = f" (waived by {report.waiver.approved_by})" if report.waived and report.waiver is not None else ""
            s.say("strict: completion contract holds" + waived)
        else:
            s.emit("run_failed", {"code": "strict_contract_failed", "message": "; ".join(report.problems)})
            s.say("strict: completion contract FAILED: " + "; ".join(report.problems))
            # The bundle must carry the verdict: build it again over the final journal.
            finalize_evidence(rt.root, rt.job_id, rt.spec.evidence.store, s.ports.journal)
            s.sync()
