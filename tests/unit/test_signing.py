"""DSSE signatures of the evidence manifest: round trip, a changed manifest, another key, the PAE encoding."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from longrun.errors import LongrunError
from longrun.evidence import signing


def _pem(key: Ed25519PrivateKey) -> tuple[str, bytes]:
    private = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    public = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return private, public


def test_pae_is_dsse_v1():
    assert signing.pae("application/example", b"hello") == b"DSSEv1 19 application/example 5 hello"


def test_a_signed_manifest_verifies_and_a_changed_one_or_another_key_does_not(tmp_path, monkeypatch):
    key = Ed25519PrivateKey.generate()
    private, public = _pem(key)
    monkeypatch.setattr(signing, "_key_loader", lambda name: {"release-key": private}[name])
    manifest = tmp_path / "abc.manifest.json"
    manifest.write_text('{"predicate": {"job_id": "0123456789ab"}}\n')

    envelope = signing.sign_manifest(manifest, signing.load_private_key("prefect-secret/release-key"))
    doc = json.loads(envelope.read_text())
    assert doc["payloadType"] == signing.PAYLOAD_TYPE
    assert base64.b64decode(doc["payload"]) == manifest.read_bytes()
    assert signing.check_envelope(manifest, public) == []

    _, other = _pem(Ed25519PrivateKey.generate())
    assert any("no signature" in p for p in signing.check_envelope(manifest, other))
    manifest.write_text('{"predicate": {"job_id": "0123456789ac"}}\n')
    problems = signing.check_envelope(manifest, public)
    assert any("other bytes than the manifest" in p for p in problems)


def test_a_bad_key_reference_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(signing, "_key_loader", lambda name: "not a pem")
    for ref in ("env:KEY", "prefect-secret/broken"):
        with pytest.raises(LongrunError) as err:
            signing.load_private_key(ref)
        assert err.value.code == "evidence_signing_failed"
