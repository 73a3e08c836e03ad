"""Result storage for checkpoints: a Prefect block plus a serializer.

``CheckpointStorage`` is the result storage of every stage, gate and
checkpoint task of a job. It is configuration (a base path) and a factory for
the core ``CheckpointStore``, which writes records atomically and lays the
checkpoint files out as plain files (``longrun.execution.checkpoint``).

``CheckpointSerializer`` writes records as readable JSON, never pickles.

Register the block type once per Prefect server (the engine also saves one
block document per job, ``longrun-ckpt-<jobId>``, when a job runs)::

    prefect block register -m longrun.blocks.checkpoints
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect.filesystems import WritableFileSystem
from prefect.serializers import Serializer
from pydantic import Field

from longrun.execution.checkpoint import CheckpointStore, decode_record, encode_record


class CheckpointStorage(WritableFileSystem):
    """Where longrun keeps per-iteration checkpoints (``.maestro/checkpoints``)."""

    _block_type_name = "Longrun Checkpoint Storage"
    _block_type_slug = "longrun-checkpoint-storage"
    _description = "Per-iteration checkpoints of longrun jobs, as plain files keyed by job, iteration and stage."

    basepath: str = Field(..., description="Absolute directory that holds <jobId>/<iter>/ checkpoint directories.")

    def store(self) -> CheckpointStore:
        return CheckpointStore(Path(self.basepath))

    # Prefect's result store resolves storage keys through this hook.
    def _resolve_path(self, path: str) -> Path:
        return self.store().resolve(path) if path else Path(self.basepath).resolve()

    # Prefect calls these with ``_sync=True`` from sync code paths.
    def read_path(self, path: str, _sync: bool = True) -> bytes:
        return self.store().read(path)

    def write_path(self, path: str, content: bytes, _sync: bool = True) -> str:
        return str(self.store().write(path, content))

    async def aread_path(self, path: str) -> bytes:
        return self.read_path(path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self.write_path(path, content)


class CheckpointSerializer(Serializer):
    """longrun records as readable JSON (see ``longrun.execution.checkpoint``)."""

    type: Literal["longrun-checkpoint"] = "longrun-checkpoint"

    def dumps(self, obj: Any) -> bytes:
        return encode_record(obj)

    def loads(self, blob: bytes) -> Any:
        return decode_record(blob)
