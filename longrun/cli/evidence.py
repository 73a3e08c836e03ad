"""``longrun evidence`` and ``longrun verify`` (SPEC C3).

::

    longrun evidence JOB [--push] [--store REF]   build the bundle (and upload it)
    longrun evidence push JOB [--store REF]       upload the bundle built before
    longrun verify TARGET [--json]                re-check a bundle against its manifest

``TARGET`` is a job (id or name: its bundle, and its files on disk, are
checked), a path to a manifest, or ``s3://bucket/prefix/<jobId>.manifest.json``
(the manifest and its bundle are downloaded to a temp directory; the endpoint
comes from ``--endpoint-url`` or ``AWS_ENDPOINT_URL``, credentials from the
usual AWS environment variables).

Exit codes: 0 ok; 1 mismatches found (``MISMATCH <name>: <problem>`` lines);
2 bad input (``job_not_found``, ``evidence_missing``, ``evidence_store_invalid``);
7 the upload failed (the local bundle is kept; ``longrun evidence push JOB``
retries).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from longrun.cli.common import EXIT_EVIDENCE_UPLOAD_FAILED, EXIT_FAILED, EXIT_OK, Out, job_root
from longrun.errors import EvidenceMissing, EvidenceStoreInvalid, LongrunError
from longrun.storage import BLOCK_SLUGS, mirror

__all__ = ["PARSERS", "cmd_evidence", "cmd_verify"]


def _add_evidence(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "evidence",
        parents=[common],
        help="build a job's evidence bundle (evidence JOB [--push]) or upload it (evidence push JOB)",
        description="Build .maestro/evidence/<jobId>.tar.gz and its manifest; with --push (or "
        "'evidence push JOB') upload them to the job's evidence.store or --store.",
    )
    s.add_argument("target", nargs="+", metavar="[push] JOB")
    s.add_argument("--push", action="store_true", help="also upload the bundle")
    s.add_argument(
        "--store",
        default=None,
        help="where to upload: '<block-type-slug>/<block-name>', s3://bucket/prefix or a directory "
        "(default: the spec's evidence.store)",
    )
    s.set_defaults(fn=cmd_evidence, parser=s)


def _add_verify(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("verify", parents=[common], help="re-check an evidence bundle against its manifest")
    s.add_argument(
        "target", metavar="TARGET", help="a job (id or name), a manifest path, or s3://bucket/prefix/<jobId>.manifest.json"
    )
    s.add_argument("--bundle", default=None, help="the tar.gz to check (default: the one the manifest names, beside it)")
    s.add_argument(
        "--key", default=None, metavar="PEM", help="also check the manifest's DSSE signature with this Ed25519 public key"
    )
    s.add_argument("--disk", action="store_true", help="for a manifest path: also re-hash the job's files under --root")
    s.add_argument("--endpoint-url", default=None, help="S3 endpoint for s3:// targets (default: $AWS_ENDPOINT_URL)")
    s.add_argument(
        "--strict",
        action="store_true",
        help="for a job: the release check — COMPLETED, every checkpoint present and hashed, every required gate "
        "passed and the bundle verified, unless a valid waiver is present (.maestro/waivers/longrun.json)",
    )
    s.set_defaults(fn=cmd_verify)


#: Command name → the function that adds its subparser (``longrun.cli.main`` orders them).
PARSERS = {"evidence": _add_evidence, "verify": _add_verify}


# ---------------------------------------------------------------- evidence


def cmd_evidence(args: argparse.Namespace, out: Out) -> int:
    from longrun.evidence.publish import finalize_evidence, push_evidence
    from longrun.journal.registry import find_job

    words = list(args.target)
    if len(words) == 2 and words[0] == "push":
        push, ref = True, words[1]
    elif len(words) == 1:
        push, ref = False, words[0]
    else:
        args.parser.error("expected 'evidence JOB' or 'evidence push JOB'")
    root = job_root(args)
    record = find_job(root, ref)
    mirror.pull_tree(record.paths.checkpoints)  # a remote root: the checkpoints other machines wrote
    if push:
        outcome = push_evidence(root, record.job_id, _store_ref(args, record), record.journal)
    else:
        upload = args.push or args.store is not None
        store_ref = _store_ref(args, record) if upload else None
        if upload and store_ref is None:
            raise EvidenceStoreInvalid(
                f"job {record.job_id} has no evidence store: set evidence.store in its spec or pass --store"
            )
        outcome = finalize_evidence(root, record.job_id, store_ref, record.journal)
    b = outcome.bundle
    human = (
        []
        if push
        else [
            f"built    {b.tar_path} ({b.files} files, {b.size} bytes, sha256 {b.sha256})",
            f"manifest {b.manifest_path}",
        ]
    )
    if outcome.uploaded is not None:
        human.append(f"uploaded {outcome.uploaded.uri}")
        if outcome.manifest_uploaded is not None:
            human.append(f"uploaded {outcome.manifest_uploaded.uri}")
    if outcome.upload_failed:
        if out.json:
            print(json.dumps(outcome.to_dict(), sort_keys=True))
        else:
            for line in human:
                print(line)
            print(
                f"{outcome.error.code if outcome.error else 'evidence_upload_failed'}: "
                f"{outcome.error.message if outcome.error else 'upload failed'}\n"
                f"the local bundle is kept; retry with: longrun evidence push {record.job_id}",
                file=sys.stderr,
            )
        return EXIT_EVIDENCE_UPLOAD_FAILED
    out.emit("\n".join(human), outcome.to_dict())
    return EXIT_OK


def _store_ref(args: argparse.Namespace, record: Any) -> str | None:
    ref = args.store if args.store is not None else record.load().spec.evidence.store
    if ref is not None and ref.partition("/")[0] in BLOCK_SLUGS:
        import longrun.blocks.evidence  # noqa: F401 - installs the block loader
    return ref


# ---------------------------------------------------------------- verify


def cmd_verify(args: argparse.Namespace, out: Out) -> int:
    from longrun.evidence.publish import fetch_uploaded_bundle
    from longrun.evidence.verify import verify

    target: str = args.target
    bundle = Path(args.bundle) if args.bundle else None
    if target.startswith("s3://"):
        with tempfile.TemporaryDirectory(prefix="longrun-verify-") as tmp:
            report = _verify_s3(target, Path(tmp), args.endpoint_url)
            return _report(_signed(report, args), out, label=target)
    path = Path(target)
    if path.is_file() and _is_gzip(path):
        # A bundle given where its manifest is expected: verify it against the manifest beside it.
        manifest = path.with_name(path.name.removesuffix(".gz").removesuffix(".tar") + ".manifest.json")
        if not manifest.is_file():
            raise EvidenceMissing(
                f"{path} is a bundle; verify takes its manifest (no {manifest.name} beside it): "
                f"longrun verify MANIFEST --bundle {path}"
            )
        report = verify(manifest, path, job_files_root=job_root(args) if args.disk else None)
        return _report(_signed(report, args), out, label=str(path))
    if path.is_file() or target.endswith(".json"):
        if not path.is_file():
            raise EvidenceMissing(f"no manifest at {path}")
        report = verify(path, bundle, job_files_root=job_root(args) if args.disk else None)
        return _report(_signed(report, args), out, label=str(path))
    from longrun.evidence.bundle import bundle_paths
    from longrun.journal.registry import find_job

    root = job_root(args)
    record = find_job(root, target)
    if args.strict:
        return _verify_strict(root, record, out)
    tar_path, manifest_path = bundle_paths(root, record.job_id)
    if not manifest_path.is_file():
        fetch_uploaded_bundle(root, record.job_id, record.state(), endpoint_url=args.endpoint_url)
    if not manifest_path.is_file():
        raise EvidenceMissing(f"job {record.job_id} has no evidence bundle yet; build it with: longrun evidence {record.job_id}")
    mirror.pull_tree(record.paths.checkpoints)  # a remote root: the files the bundle is checked against
    report = verify(manifest_path, bundle or tar_path, job_files_root=root)
    return _report(_signed(report, args), out, label=f"{record.name} ({record.job_id})")


def _signed(report: Any, args: argparse.Namespace) -> Any:
    """With ``--key``: the manifest's DSSE envelope must verify with that public key (else a mismatch)."""
    if not getattr(args, "key", None):
        return report
    from dataclasses import replace

    from longrun.evidence.signing import check_envelope, envelope_path
    from longrun.evidence.verify import Mismatch

    try:
        key = Path(args.key).read_bytes()
    except OSError as exc:
        raise LongrunError(f"cannot read the public key {args.key}: {exc.strerror or exc}", code="usage_error") from None
    problems = check_envelope(Path(report.manifest_path), key)
    name = envelope_path(Path(report.manifest_path)).name
    return replace(report, mismatches=(*report.mismatches, *(Mismatch(name, p, "signature") for p in problems)))


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _verify_strict(root: Path, record: Any, out: Out) -> int:
    """``verify JOB --strict``: exit 0 only when the strict completion contract holds (or is waived)."""
    from datetime import UTC, datetime

    from longrun.governance.waiver import strict_report

    loaded = record.load()
    report = strict_report(root, record.job_id, record.state(), loaded.spec, datetime.now(UTC))
    doc = report.to_dict() | {"job_id": record.job_id}
    if out.json:
        print(json.dumps(doc, sort_keys=True, default=str))
    elif report.ok:
        waived = (
            f"; WAIVED by {report.waiver.approved_by} until {report.waiver.expires_at}: {report.waiver.reason}"
            if report.waived
            else ""
        )
        print(f"OK  {record.name} ({record.job_id}): strict completion contract holds{waived}")
        for problem in report.problems:
            print(f"  waived: {problem}")
    else:
        for problem in report.problems:
            print(f"VIOLATION {problem}")
        print(f"FAILED  {record.name} ({record.job_id}): strict completion contract does not hold")
    return EXIT_OK if report.ok else EXIT_FAILED


def _verify_s3(uri: str, tmp: Path, endpoint_url: str | None):
    from longrun.evidence.verify import verify
    from longrun.storage import parse_s3_uri
    from longrun.storage.s3 import S3Store

    bucket, key = parse_s3_uri(uri)
    if not key.endswith(".manifest.json"):
        raise EvidenceStoreInvalid(f"{uri} does not name a manifest (<jobId>.manifest.json)")
    store = S3Store.from_uri(f"s3://{bucket}", endpoint_url=endpoint_url)
    manifest = store.get(key, tmp / "manifest.json")
    try:
        name = json.loads(manifest.read_bytes())["predicate"]["bundle"]["name"]
    except (ValueError, KeyError, TypeError):
        name = None
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        return verify(manifest)  # reports what is wrong with the manifest
    tar = store.get(store.sibling_key(key, name), tmp / name)
    return verify(manifest, tar)


def _report(report: Any, out: Out, *, label: str) -> int:
    if out.json:
        print(json.dumps(report.to_dict(), sort_keys=True))
        return EXIT_OK if report.ok else EXIT_FAILED
    if report.ok:
        disk = " and the job's files on disk" if report.checked_disk else ""
        if report.bundle_only:
            disk += f" ({report.bundle_only} of pruned iterations: in the bundle only)"
        print(f"OK  {label}: {report.files} file(s) match the manifest{disk}")
        return EXIT_OK
    for m in report.mismatches:
        print(f"MISMATCH {m.name}: {m.problem}")
    print(f"FAILED  {label}: {len(report.mismatches)} mismatch(es)")
    return EXIT_FAILED
