"""An evidence store that is a directory (a mounted share, or a local mirror)."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

from longrun import atomicio
from longrun.errors import EvidenceMissing, EvidenceStoreError
from longrun.storage import StoredObject, check_key
from longrun.storage.paths import safe_join

_CHUNK = 1 << 20


class LocalDirStore:
    """Objects are files under ``path`` (keys are relative paths below it)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"LocalDirStore({str(self.path)!r})"

    def _target(self, key: str) -> Path:
        return safe_join(self.path, check_key(key), what="store key")

    def uri_for(self, key: str) -> str:
        return self._target(key).as_uri()

    def put(self, local: Path, key: str, *, sha256: str) -> StoredObject:
        """Copy ``local`` to ``<path>/<key>`` atomically, hashing while copying.

        When the bytes read do not hash to ``sha256`` nothing is replaced and
        :class:`EvidenceStoreError` (code ``evidence_upload_failed``) is raised.
        """
        target = self._target(key)
        h = hashlib.sha256()
        size = 0
        with open(local, "rb") as fin, atomicio.atomic_writer(target) as fout:
            while block := fin.read(_CHUNK):
                h.update(block)
                fout.write(block)
                size += len(block)
            if h.hexdigest() != sha256:
                raise EvidenceStoreError(
                    f"{local}: sha256 {h.hexdigest()} is not the expected {sha256}; {target} left unchanged",
                    code="evidence_upload_failed",
                )
        return StoredObject(self.uri_for(key), size, sha256)

    def get(self, key: str, dest: Path) -> Path:
        source = self._target(key)
        if not source.is_file():
            raise EvidenceMissing(f"{self.uri_for(key)} does not exist")
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / PurePosixPath(key).name
        atomicio.copy_atomic(source, dest)
        return dest
