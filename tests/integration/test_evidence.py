"""Evidence bundles (SPEC C3): content, determinism, the in-toto manifest, verify.

Jobs here are real: a spec registered through ``longrun.journal.registry.register``, a
journal written through ``Journal.append`` and checkpoint files on disk. Bad
bundles are crafted by hand with ``tarfile``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from conftest import longrun_cli
from evidence_helpers import make_job, members, reg, sha, write_tar

from longrun.cli.main import main as cli_main
from longrun.errors import EvidenceMismatch, EvidenceMissing, EvidenceStoreInvalid, PathEscape
from longrun.evidence.bundle import build_bundle, bundle_paths
from longrun.evidence.layout import MANIFEST_TYPE, PREDICATE_TYPE
from longrun.evidence.manifest import manifest_markdown
from longrun.evidence.publish import finalize_evidence, push_evidence
from longrun.evidence.verify import verify
from longrun.journal.fold import replay
from longrun.journal.local import Journal
from longrun.spec.loader import job_id_for, validate_spec_data
from longrun.storage import LocalDirStore, StoredObject, resolve_store
from longrun.storage.paths import JobPaths

FIXTURES = Path(__file__).parents[1] / "fixtures" / "journals"


@pytest.fixture
def job(tmp_path) -> JobPaths:
    return make_job(tmp_path)


def rewrite_tar(src: Path, dst: Path, change: dict[str, bytes | None] | None = None, add: dict[str, bytes] | None = None) -> None:
    """Rebuild a bundle: replace members (None removes one) and add others."""
    change, add = change or {}, add or {}
    entries = []
    for name, (info, data) in members(src).items():
        if name in change:
            if change[name] is None:
                continue
            data = change[name]
        entries.append(reg(name, data))
    entries += [reg(n, d) for n, d in add.items()]
    write_tar(dst, entries)


def set_bundle_digest(manifest_path: Path, tar_path: Path) -> None:
    """Make the manifest's bundle digest match ``tar_path`` (an attacker who rewrites both)."""
    doc = json.loads(manifest_path.read_text())
    data = tar_path.read_bytes()
    doc["predicate"]["bundle"].update(sha256=sha(data), size=len(data))
    manifest_path.write_text(json.dumps(doc, sort_keys=True, indent=2) + "\n")


def flip_byte(path: Path, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def problems(report) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in report.mismatches:
        out.setdefault(m.name, []).append(m.problem)
    return out


# ------------------------------------------------------------------ content


def test_bundle_holds_checkpoints_journal_and_spec_only(job):
    result = build_bundle(job.root, job.job_id)
    assert result.tar_path == job.evidence_dir / f"{job.job_id}.tar.gz"
    assert result.manifest_path == job.evidence_dir / f"{job.job_id}.manifest.json"
    got = members(result.tar_path)
    per_iter = ["command.log", "patch.diff", "plan-diff.md", "stages/execute.json", "summary.md", "test-report.json"]
    expected = sorted([f"checkpoints/{it}/{name}" for it in (1, 2) for name in per_iter] + ["events.jsonl", "spec.json"])
    assert list(got) == expected  # sorted, no running/, no temp files, no symlinks, no directories
    assert got["spec.json"][1] == job.spec_file.read_bytes()
    assert got["events.jsonl"][1] == job.events_file.read_bytes()
    assert got["checkpoints/2/summary.md"][1] == b"# iteration 2\n"
    assert result.files == len(expected)


def test_waiver_is_bundled_when_present(tmp_path):
    paths = make_job(tmp_path, waiver=True)
    result = build_bundle(paths.root, paths.job_id)
    got = members(result.tar_path)
    assert got["waivers/longrun.json"][1] == (tmp_path / ".maestro/waivers/longrun.json").read_bytes()
    w = result.manifest["predicate"]["waiver"]
    assert w["approved_by"] == "captain" and w["member"] == "waivers/longrun.json"


def test_headers_are_normalised(job):
    result = build_bundle(job.root, job.job_id)
    for info, _ in members(result.tar_path).values():
        assert info.isreg()
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (0, 0, 0, "", "", 0o644)
    raw = result.tar_path.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert raw[4:8] == b"\0\0\0\0"  # gzip mtime 0
    assert raw[3] & 0x08 == 0  # no FNAME field


def test_two_builds_are_byte_identical(job):
    first = build_bundle(job.root, job.job_id)
    tar1, man1 = first.tar_path.read_bytes(), first.manifest_path.read_bytes()
    # New mtimes and a new inode for every file: nothing of that may leak in.
    for p in job.checkpoints.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            p.unlink()
            p.write_bytes(data)
            os.utime(p, (1_900_000_000, 1_900_000_000))
    second = build_bundle(job.root, job.job_id)
    assert second.tar_path.read_bytes() == tar1
    assert second.manifest_path.read_bytes() == man1
    assert second.sha256 == first.sha256 == sha(tar1)


def test_journal_line_being_written_is_left_out(job):
    with open(job.events_file, "ab") as fh:
        fh.write(b'{"seq": 99, "type": "run_st')  # a torn tail
    result = build_bundle(job.root, job.job_id)
    got = members(result.tar_path)["events.jsonl"][1]
    assert got.endswith(b"\n") and b'seq": 99' not in got


def test_missing_job_files_raise_evidence_missing(tmp_path, job):
    with pytest.raises(EvidenceMissing):
        build_bundle(tmp_path / "elsewhere", job.job_id)


# ------------------------------------------------------------------ manifest


def test_manifest_is_an_in_toto_statement(job):
    result = build_bundle(job.root, job.job_id)
    text = result.manifest_path.read_text()
    doc = json.loads(text)
    assert text == json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert doc["_type"] == MANIFEST_TYPE == "https://in-toto.io/Statement/v1"
    assert doc["predicateType"] == PREDICATE_TYPE == "https://longrun.dev/evidence/v1"
    names = [s["name"] for s in doc["subject"]]
    assert names == sorted(names)
    got = members(result.tar_path)
    for s in doc["subject"]:
        data = got[s["name"]][1]
        assert s["digest"] == {"sha256": sha(data)}
        assert s["annotations"] == {"size": len(data)}

    events = Journal(job.events_file).read()
    p = doc["predicate"]
    assert p["job_id"] == job.job_id and p["name"] == "fix-failing-test"
    assert p["spec_sha256"] == sha(job.spec_file.read_bytes().rstrip(b"\n"))
    stored = json.loads(job.spec_file.read_bytes())
    assert job_id_for(validate_spec_data(stored["spec"])) == job.job_id  # the id is recomputable from the stored spec
    assert p["status"] == "COMPLETED" and p["iterations"] == 2
    assert p["gates"]["last_iteration"] == 2 and p["gates"]["required_passed"] is True
    assert p["gates"]["last"]["tests"] == {
        "kind": "test_pass",
        "required": True,
        "passed": True,
        "evidence": {"tests": 3, "passed": 3},
    }
    assert p["gates"]["per_iteration"]["1"]["tests"]["passed"] is False
    assert p["budget"]["usd"] == pytest.approx(0.10) and p["budget"]["tokens"] == 10000
    assert p["budget"]["limits"]["total_usd"] == 1.0
    assert p["approvals"] == [
        {
            "decision": "APPROVED",
            "step": "merge",
            "approver": "alice",
            "comment": "lgtm",
            "iteration": 2,
            "seq": events[-2].seq,
            "ts": events[-2].to_dict()["ts"],
        }
    ]
    assert p["versions"] == {"longrun": metadata.version("longrun"), "prefect": metadata.version("prefect")}
    assert p["flow_run_ids"] == ["fr-1"]
    assert p["built_from_seq"] == events[-1].seq
    assert p["created_at"] == events[-1].to_dict()["ts"]
    assert p["bundle"] == {
        "name": f"{job.job_id}.tar.gz",
        "sha256": sha(result.tar_path.read_bytes()),
        "size": result.tar_path.stat().st_size,
    }


def test_approvals_absent_is_an_empty_list(tmp_path):
    paths = make_job(tmp_path, approvals=False)
    assert build_bundle(paths.root, paths.job_id).manifest["predicate"]["approvals"] == []


def test_manifest_markdown_summarises(job):
    md = manifest_markdown(build_bundle(job.root, job.job_id).manifest)
    assert md.startswith("# Evidence — fix-failing-test")
    assert "**COMPLETED**" in md and "| tests | test_pass | yes | PASS |" in md
    assert "APPROVED `merge` by alice" in md


# ------------------------------------------------------------------ verify: tampering


def test_fresh_bundle_verifies_with_and_without_disk(job):
    result = build_bundle(job.root, job.job_id)
    assert verify(result.manifest_path).ok
    report = verify(result.manifest_path, job_files_root=job.root)
    assert report.ok and report.checked_disk and report.files == result.files


def test_changed_checkpoint_on_disk_is_named(job):
    result = build_bundle(job.root, job.job_id)
    flip_byte(job.iteration_dir(1) / "summary.md", 3)
    assert verify(result.manifest_path).ok  # the bundle itself is intact
    report = verify(result.manifest_path, job_files_root=job.root)
    assert not report.ok
    assert [str(m).split(" (")[0] for m in report.mismatches] == ["checkpoints/1/summary.md: sha256 differs on disk"]
    assert report.mismatches[0].where == "disk"


def test_deleted_checkpoint_on_disk_is_named(job):
    result = build_bundle(job.root, job.job_id)
    (job.iteration_dir(2) / "patch.diff").unlink()
    assert problems(verify(result.manifest_path, job_files_root=job.root)) == {
        "checkpoints/2/patch.diff": [f"missing on disk ({job.iteration_dir(2) / 'patch.diff'})"]
    }


def test_changed_journal_on_disk_is_named_but_appends_are_fine(job):
    result = build_bundle(job.root, job.job_id)
    Journal(job.events_file).append("stop_requested", {"by": "ops", "reason": "later event"}, job_id=job.job_id)
    assert verify(result.manifest_path, job_files_root=job.root).ok  # the journal only grows
    flip_byte(job.events_file, 10)
    report = verify(result.manifest_path, job_files_root=job.root)
    assert list(problems(report)) == ["events.jsonl"]
    assert problems(report)["events.jsonl"][0].startswith("sha256 differs on disk")


def test_member_changed_in_a_rebuilt_tar_is_named(job):
    result = build_bundle(job.root, job.job_id)
    original = members(result.tar_path)["checkpoints/1/command.log"][1]
    tampered = bytearray(original)
    tampered[0] ^= 0x01
    rewrite_tar(result.tar_path, result.tar_path, change={"checkpoints/1/command.log": bytes(tampered)})
    got = problems(verify(result.manifest_path))
    assert got == {
        f"{job.job_id}.tar.gz": [
            "sha256 differs from the manifest's bundle digest",
            f"size {result.tar_path.stat().st_size} differs from the manifest's {result.size}",
        ]
        if result.tar_path.stat().st_size != result.size
        else ["sha256 differs from the manifest's bundle digest"],
        "checkpoints/1/command.log": ["sha256 differs in the bundle"],
    }
    # An attacker who also fixes the bundle digest is still caught by the member digest.
    set_bundle_digest(result.manifest_path, result.tar_path)
    assert problems(verify(result.manifest_path)) == {"checkpoints/1/command.log": ["sha256 differs in the bundle"]}


def test_events_changed_in_the_bundle_is_named(job):
    result = build_bundle(job.root, job.job_id)
    events = members(result.tar_path)["events.jsonl"][1]
    rewrite_tar(result.tar_path, result.tar_path, change={"events.jsonl": events.replace(b"alice", b"mallo")})
    set_bundle_digest(result.manifest_path, result.tar_path)
    assert problems(verify(result.manifest_path)) == {"events.jsonl": ["sha256 differs in the bundle"]}


def test_bundle_digest_in_the_manifest_is_checked(job):
    result = build_bundle(job.root, job.job_id)
    doc = json.loads(result.manifest_path.read_text())
    digest = doc["predicate"]["bundle"]["sha256"]
    doc["predicate"]["bundle"]["sha256"] = ("0" if digest[0] != "0" else "1") + digest[1:]
    result.manifest_path.write_text(json.dumps(doc, sort_keys=True, indent=2) + "\n")
    assert problems(verify(result.manifest_path)) == {
        f"{job.job_id}.tar.gz": ["sha256 differs from the manifest's bundle digest"]
    }


def test_byte_flipped_in_the_compressed_bundle_is_reported(job):
    result = build_bundle(job.root, job.job_id)
    flip_byte(result.tar_path, result.size // 2)
    report = verify(result.manifest_path)
    assert not report.ok
    assert report.mismatches[0] == type(report.mismatches[0])(
        f"{job.job_id}.tar.gz", "sha256 differs from the manifest's bundle digest"
    )


def test_missing_extra_and_resized_members(job):
    result = build_bundle(job.root, job.job_id)
    rewrite_tar(result.tar_path, result.tar_path, change={"spec.json": None}, add={"checkpoints/9/extra.txt": b"x"})
    doc = json.loads(result.manifest_path.read_text())
    for s in doc["subject"]:
        if s["name"] == "checkpoints/1/patch.diff":
            s["annotations"]["size"] += 1
    result.manifest_path.write_text(json.dumps(doc))
    set_bundle_digest(result.manifest_path, result.tar_path)
    got = problems(verify(result.manifest_path))
    assert got["spec.json"] == ["listed in the manifest but missing from the bundle"]
    assert got["checkpoints/9/extra.txt"] == ["in the bundle but not in the manifest"]
    assert got["checkpoints/1/patch.diff"][0].startswith("size ")


@pytest.mark.parametrize(
    "name, kind, expect",
    [
        ("/etc/passwd", tarfile.REGTYPE, "absolute member name refused"),
        ("../escape.txt", tarfile.REGTYPE, "climbs out with '..'"),
        ("checkpoints/1/../../../escape.txt", tarfile.REGTYPE, "climbs out with '..'"),
        ("checkpoints/1/link", tarfile.SYMTYPE, "symlink member (-> /etc/shadow) refused"),
        ("checkpoints/1/hard", tarfile.LNKTYPE, "hard link member (-> /etc/shadow) refused"),
        ("checkpoints/1/tty", tarfile.CHRTYPE, "character device member refused"),
        ("checkpoints/1/disk", tarfile.BLKTYPE, "block device member refused"),
        ("checkpoints/1/pipe", tarfile.FIFOTYPE, "fifo member refused"),
        ("checkpoints/1/dir", tarfile.DIRTYPE, "directory member refused"),
    ],
)
def test_malicious_members_are_refused(job, name, kind, expect):
    result = build_bundle(job.root, job.job_id)
    entries = [reg(n, d) for n, (_, d) in members(result.tar_path).items()]
    evil = tarfile.TarInfo(name)
    evil.type = kind
    data: bytes | None = None
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        evil.linkname = "/etc/shadow"
    elif kind == tarfile.REGTYPE:
        data = b"pwned\n"
        evil.size = len(data)
    write_tar(result.tar_path, entries + [(evil, data)])
    # List the evil member in the manifest too, as a forger would.
    doc = json.loads(result.manifest_path.read_text())
    doc["subject"].append({"name": name, "digest": {"sha256": sha(data or b"")}, "annotations": {"size": len(data or b"")}})
    doc["subject"].sort(key=lambda s: s["name"])
    result.manifest_path.write_text(json.dumps(doc))
    set_bundle_digest(result.manifest_path, result.tar_path)
    report = verify(result.manifest_path)
    assert not report.ok
    assert any(m.name == name and expect in m.problem for m in report.mismatches), report.mismatches


def test_malformed_manifest_is_a_mismatch_and_missing_files_are_missing(job, tmp_path):
    result = build_bundle(job.root, job.job_id)
    bad = tmp_path / "bad.manifest.json"
    bad.write_text("{not json")
    assert not verify(bad).ok
    bad.write_text(
        json.dumps(
            {
                "_type": "x",
                "subject": [],
                "predicateType": PREDICATE_TYPE,
                "predicate": {"job_id": job.job_id, "bundle": {"name": "../x.tar.gz", "sha256": "0", "size": 1}},
            }
        )
    )
    names = problems(verify(bad))["bad.manifest.json"]
    assert any("_type" in p for p in names) and any("plain file name" in p for p in names)
    with pytest.raises(EvidenceMissing):
        verify(tmp_path / "nope.manifest.json")
    result.tar_path.unlink()
    with pytest.raises(EvidenceMissing):
        verify(result.manifest_path)


def test_disk_check_refuses_subjects_that_escape(job):
    result = build_bundle(job.root, job.job_id)
    doc = json.loads(result.manifest_path.read_text())
    doc["subject"].append(
        {"name": "checkpoints/../../../etc/hostname", "digest": {"sha256": "0" * 64}, "annotations": {"size": 1}}
    )
    result.manifest_path.write_text(json.dumps(doc))
    got = problems(verify(result.manifest_path, job_files_root=job.root))
    assert got["checkpoints/../../../etc/hostname"][-1].startswith("refused")


def test_raise_for_mismatch(job):
    result = build_bundle(job.root, job.job_id)
    flip_byte(job.iteration_dir(1) / "summary.md")
    with pytest.raises(EvidenceMismatch, match="checkpoints/1/summary.md"):
        verify(result.manifest_path, job_files_root=job.root).raise_for_mismatch()


# ------------------------------------------------------------------ events and state


def test_golden_journal_with_evidence_events():
    events = Journal(FIXTURES / "evidence_events.jsonl").read()
    # seq 9: run_completed; 10 built (sha a…); 11 upload failed; 12 uploaded; 13 rebuilt, same sha; 14 rebuilt, new sha.
    after_fail = replay(events[:11])
    assert after_fail.status == "COMPLETED" and after_fail.active_seconds == 21.0  # 09:00:01 → 09:00:22
    assert after_fail.evidence["built"]["sha256"] == "a" * 64
    assert after_fail.evidence["upload_failed"]["retryable"] is True
    assert after_fail.evidence["uploaded"] is None
    uploaded = replay(events[:12])
    assert uploaded.evidence["uploaded"]["uri"].endswith("e1d2c3b4a5f6.tar.gz")
    assert uploaded.evidence["upload_failed"] is None
    same = replay(events[:13])
    assert same.evidence["uploaded"] is not None and same.evidence["built"]["ts"] == "2025-04-01T10:05:00.000000Z"
    final = replay(events)
    assert final.status == "COMPLETED" and final.stop_reason is None and final.active_seconds == 21.0
    assert final.evidence == {
        "built": {
            "manifest": ".maestro/evidence/e1d2c3b4a5f6.manifest.json",
            "bundle": ".maestro/evidence/e1d2c3b4a5f6.tar.gz",
            "sha256": "b" * 64,
            "size": 5120,
            "files": 9,
            "built_from_seq": 13,
            "signature": None,  # a field added later (evidence.signing_key): None in a journal written before it
            "ts": "2025-04-01T11:00:00.000000Z",
        },
        "uploaded": None,
        "upload_failed": None,
    }
    assert final.last_event_type == "evidence_built" and final.iterations_finished == 1


# ------------------------------------------------------------------ publish (local stores)


def test_finalize_without_a_store_is_local_only(job):
    outcome = finalize_evidence(job.root, job.job_id, None, Journal(job.events_file))
    assert outcome.status == "local" and not outcome.upload_failed
    state = Journal(job.events_file).state()
    assert state.status == "COMPLETED"
    assert state.evidence["built"]["sha256"] == outcome.bundle.sha256
    assert state.evidence["built"]["bundle"] == f".maestro/evidence/{job.job_id}.tar.gz"


def test_finalize_to_a_directory_store(job):
    outcome = finalize_evidence(job.root, job.job_id, "mirror/evidence", Journal(job.events_file))
    assert outcome.status == "uploaded"
    copied = job.root / "mirror" / "evidence" / job.job_id / f"{job.job_id}.tar.gz"
    assert copied.read_bytes() == outcome.bundle.tar_path.read_bytes()
    assert outcome.uploaded == StoredObject(copied.resolve().as_uri(), outcome.bundle.size, outcome.bundle.sha256)
    assert verify(copied.with_name(f"{job.job_id}.manifest.json")).ok
    state = Journal(job.events_file).state()
    assert state.evidence["uploaded"]["sha256"] == outcome.bundle.sha256


def test_store_refs_resolve_and_may_not_escape(tmp_path):
    assert resolve_store(None, tmp_path).path == tmp_path / ".maestro" / "evidence"
    assert isinstance(resolve_store("some/dir", tmp_path), LocalDirStore)
    with pytest.raises(PathEscape):
        resolve_store("../outside", tmp_path)
    with pytest.raises(PathEscape):
        resolve_store("/abs/path", tmp_path)
    with pytest.raises(EvidenceStoreInvalid):
        resolve_store("longrun-s3-evidence-store/", tmp_path)


def test_local_store_refuses_a_wrong_digest(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"abc")
    store = LocalDirStore(tmp_path / "store")
    with pytest.raises(Exception) as info:
        store.put(src, "j/a.bin", sha256="0" * 64)
    assert info.value.code == "evidence_upload_failed"
    assert not (tmp_path / "store" / "j" / "a.bin").exists()
    with pytest.raises(PathEscape):
        store.put(src, "../a.bin", sha256=sha(b"abc"))


def test_push_refuses_a_tampered_bundle(job):
    build_bundle(job.root, job.job_id)
    tar_path, _ = bundle_paths(job.root, job.job_id)
    flip_byte(tar_path, 40)
    with pytest.raises(EvidenceMismatch):
        push_evidence(job.root, job.job_id, "mirror", Journal(job.events_file))
    assert not (job.root / "mirror").exists()


def test_push_without_a_bundle_is_evidence_missing(job):
    with pytest.raises(EvidenceMissing):
        push_evidence(job.root, job.job_id, "mirror", Journal(job.events_file))


# ------------------------------------------------------------------ CLI


def test_cli_evidence_and_verify(job, capsys, monkeypatch):
    monkeypatch.setenv("LONGRUN_ROOT", str(job.root))
    assert cli_main(["verify", job.job_id]) == 2  # nothing built yet
    assert "evidence_missing" in capsys.readouterr().err
    assert cli_main(["evidence", "fix-failing-test"]) == 0
    assert "built" in capsys.readouterr().out
    assert cli_main(["verify", "fix-failing-test"]) == 0
    assert capsys.readouterr().out.startswith("OK  fix-failing-test")

    flip_byte(job.iteration_dir(2) / "command.log")
    assert cli_main(["verify", job.job_id]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("MISMATCH checkpoints/2/command.log: sha256 differs on disk")
    assert cli_main(["verify", job.job_id, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["mismatches"][0]["name"] == "checkpoints/2/command.log"

    manifest = job.evidence_dir / f"{job.job_id}.manifest.json"
    assert cli_main(["verify", str(manifest)]) == 0  # the bundle alone is intact
    capsys.readouterr()
    # A bundle path where a manifest is expected: verified against the manifest beside it, not "not valid JSON".
    tar = job.evidence_dir / f"{job.job_id}.tar.gz"
    assert cli_main(["verify", str(tar)]) == 0
    assert capsys.readouterr().out.startswith(f"OK  {tar}")
    lone = job.root / "elsewhere.tar.gz"
    lone.write_bytes(tar.read_bytes())
    assert cli_main(["verify", str(lone)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("evidence_missing") and "is a bundle" in err and "--bundle" in err and "utf-8" not in err
    assert cli_main(["verify", "no-such-job"]) == 2
    assert "job_not_found" in capsys.readouterr().err
    assert cli_main(["evidence", "push", job.job_id]) == 2  # the example spec names no store
    assert "evidence_store_invalid" in capsys.readouterr().err
    assert cli_main(["evidence", "push", job.job_id, "--store", "mirror", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "uploaded"


def test_cli_subprocess_exit_codes(job):
    r = longrun_cli("evidence", job.job_id, "--root", str(job.root), cwd=job.root)
    assert r.returncode == 0, r.stderr
    r = longrun_cli("verify", job.job_id, "--root", str(job.root), "--json", cwd=job.root)
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True
    flip_byte(job.iteration_dir(1) / "summary.md")
    r = longrun_cli("verify", job.job_id, "--root", str(job.root), cwd=job.root)
    assert r.returncode == 1 and "MISMATCH checkpoints/1/summary.md: sha256 differs" in r.stdout


def test_core_modules_import_neither_prefect_nor_boto3():
    code = (
        "import sys, longrun.evidence.bundle, longrun.evidence.verify, longrun.evidence.publish, longrun.storage, longrun.storage.s3, "
        "longrun.storage.local, longrun.cli.evidence, longrun.cli.main; "
        "bad = [m for m in ('prefect', 'boto3', 'botocore') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------ memory


@pytest.mark.slow
def test_bundle_of_a_200mb_log_keeps_memory_flat(tmp_path):
    paths = make_job(tmp_path)
    log = paths.iteration_dir(1) / "command.log"
    chunk = b"".join(b"%08d some test output line that repeats with a counter\n" % i for i in range(20000))
    chunk = chunk[: 1 << 20]
    with open(log, "wb") as fh:
        for _ in range(200):
            fh.write(chunk)
    assert log.stat().st_size == 200 << 20
    script = textwrap.dedent(
        """
        import json, resource, sys
        from pathlib import Path
        from longrun.evidence.bundle import build_bundle
        from longrun.evidence.verify import verify
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = build_bundle(Path(sys.argv[1]), sys.argv[2])
        built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ok = verify(result.manifest_path, job_files_root=Path(sys.argv[1])).ok
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"before_kb": before, "built_kb": built, "after_kb": after, "ok": ok}))
        """
    )
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path), paths.job_id], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    rss = json.loads(r.stdout)
    print(rss)
    assert rss["ok"] is True
    assert rss["built_kb"] - rss["before_kb"] < 50 * 1024, rss
    assert rss["after_kb"] - rss["before_kb"] < 50 * 1024, rss
    # And the big member really is in the bundle, whole.
    subject = {s["name"]: s for s in json.loads(bundle_paths(tmp_path, paths.job_id)[1].read_text())["subject"]}
    assert subject["checkpoints/1/command.log"]["annotations"]["size"] == 200 << 20
    shutil.rmtree(paths.checkpoints)


# ------------------------------------------------------------------ the journal's hash chain


def test_the_manifest_records_the_chain_head_and_verify_catches_a_broken_chain_or_a_deleted_tail(job):
    import hashlib

    built = build_bundle(job.root, job.job_id)
    lines = job.events_file.read_bytes().splitlines(keepends=True)
    recorded = json.loads(built.manifest_path.read_text())["predicate"]["journal_chain"]
    assert recorded == {
        "head": hashlib.sha256(lines[-1]).hexdigest(),
        "events": len(lines),
        "chained": True,
        "ok": True,
        "broken_seq": None,
    }
    assert verify(built.manifest_path, built.tar_path, job_files_root=job.root).ok

    # A deleted tail: the journal left is a valid chain, but not the one the manifest recorded.
    job.events_file.write_bytes(b"".join(lines[:-2]))
    problems = [m.problem for m in verify(built.manifest_path, built.tar_path, job_files_root=job.root).mismatches]
    assert any("tail was deleted or rewritten" in p for p in problems), problems

    # An edited event in the middle: the chain breaks at the next event, which verify names.
    event = json.loads(lines[3])
    assert "iteration" in event["payload"], event
    event["payload"]["iteration"] = 7
    edited = (json.dumps(event, separators=(",", ":")) + "\n").encode()
    job.events_file.write_bytes(b"".join([*lines[:3], edited, *lines[4:]]))
    problems = [m.problem for m in verify(built.manifest_path, built.tar_path, job_files_root=job.root).mismatches]
    assert any(p.startswith("hash chain broken at seq 5") for p in problems), problems
