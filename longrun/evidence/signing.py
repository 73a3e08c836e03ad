"""Signing the evidence manifest: a DSSE envelope with an Ed25519 key.

``evidence.signing_key: prefect-secret/<block name>`` in a spec names a Prefect
Secret block that holds an Ed25519 private key (PEM). At the end of every run the
manifest is signed and the envelope written beside it as
``<runId>.manifest.json.dsse.json``::

    {"payloadType": "application/vnd.in-toto+json",
     "payload": base64(manifest bytes),
     "signatures": [{"keyid": sha256(public key DER)[:16], "sig": base64(Ed25519(PAE))}]}

where PAE is DSSE's pre-authentication encoding
``"DSSEv1" SP len(type) SP type SP len(payload) SP payload``. ``longrun verify
JOB --key public.pem`` checks it. The block is read through a loader that
``longrun.blocks`` installs (this layer does not import Prefect).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from longrun import atomicio
from longrun.errors import LongrunError

PAYLOAD_TYPE = "application/vnd.in-toto+json"
KEY_PREFIX = "prefect-secret/"

_key_loader: Callable[[str], str] | None = None


def set_key_loader(loader: Callable[[str], str]) -> None:
    """Install what reads a Secret block's value (``longrun.blocks`` does, when imported)."""
    global _key_loader
    _key_loader = loader


def envelope_path(manifest_path: Path) -> Path:
    return manifest_path.with_name(manifest_path.name + ".dsse.json")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding (what is signed)."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _keyid(public_der: bytes) -> str:
    return hashlib.sha256(public_der).hexdigest()[:16]


def load_private_key(ref: str) -> object:
    """The Ed25519 private key a ``prefect-secret/<name>`` reference names."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if not ref.startswith(KEY_PREFIX) or _key_loader is None:
        raise LongrunError(f"signing key {ref!r}: expected prefect-secret/<block name>", code="evidence_signing_failed")
    try:
        pem = _key_loader(ref[len(KEY_PREFIX) :])
        key = load_pem_private_key(pem.encode("utf-8"), password=None)
    except LongrunError:
        raise
    except Exception as exc:
        raise LongrunError(
            f"signing key {ref!r} could not be loaded ({type(exc).__name__}: {exc})", code="evidence_signing_failed"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LongrunError(f"signing key {ref!r} is not an Ed25519 private key", code="evidence_signing_failed")
    return key


def sign_manifest(manifest_path: Path, private_key: object) -> Path:
    """Write the DSSE envelope of ``manifest_path`` beside it; returns its path."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    payload = manifest_path.read_bytes()
    sig = private_key.sign(pae(PAYLOAD_TYPE, payload))  # type: ignore[attr-defined]
    public_der = private_key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]
    envelope = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": _keyid(public_der), "sig": base64.b64encode(sig).decode("ascii")}],
    }
    path = envelope_path(manifest_path)
    atomicio.write_atomic(path, json.dumps(envelope, sort_keys=True, indent=2) + "\n")
    return path


def check_envelope(manifest_path: Path, public_key_pem: bytes) -> list[str]:
    """Problems with the manifest's DSSE envelope under ``public_key_pem`` (empty: it is signed by that key)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

    try:
        key = load_pem_public_key(public_key_pem)
    except ValueError as exc:
        return [f"the public key is not a PEM key ({exc})"]
    if not isinstance(key, Ed25519PublicKey):
        return ["the public key is not an Ed25519 key"]
    path = envelope_path(manifest_path)
    try:
        envelope = json.loads(path.read_bytes())
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = envelope["signatures"]
    except FileNotFoundError:
        return [f"no signature envelope at {path}"]
    except (ValueError, KeyError, TypeError) as exc:
        return [f"{path.name} is not a DSSE envelope ({type(exc).__name__}: {exc})"]
    problems = []
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        problems.append(f"payloadType is {envelope.get('payloadType')!r}, not {PAYLOAD_TYPE!r}")
    if payload != manifest_path.read_bytes():
        problems.append("the envelope signs other bytes than the manifest beside it")
    keyid = _keyid(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    ok = False
    for s in signatures if isinstance(signatures, list) else []:
        try:
            key.verify(base64.b64decode(s["sig"], validate=True), pae(PAYLOAD_TYPE, payload))
            ok = True
        except (InvalidSignature, KeyError, TypeError, ValueError):
            continue
    if not ok:
        problems.append(f"no signature in the envelope verifies with the given key (keyid {keyid})")
    return problems
