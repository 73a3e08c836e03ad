"""Prefect blocks naming where evidence bundles go: configuration plus a factory.

A job spec names a saved block as ``evidence.store: <block-type-slug>/<name>``,
e.g. ``longrun-s3-evidence-store/prod``; the core resolves it with
``longrun.storage.resolve_store``. Register the block types once per server::

    prefect block register -m longrun.blocks.evidence

and save a block from Python::

    from longrun.blocks.evidence import S3EvidenceStore
    S3EvidenceStore(bucket="evidence", prefix="longrun",
                    endpoint_url="http://minio:9000", addressing_style="path",
                    aws_access_key_id="…", aws_secret_access_key="…").save("prod")
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from longrun.errors import EvidenceStoreError, EvidenceStoreInvalid
from longrun.evidence.signing import set_key_loader
from longrun.storage import LOCAL_BLOCK_SLUG, S3_BLOCK_SLUG, EvidenceStore, set_block_loader
from longrun.storage.local import LocalDirStore
from longrun.storage.s3 import S3Store

__all__ = ["BLOCK_CLASSES", "LocalEvidenceStore", "S3EvidenceStore"]


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


class S3EvidenceStore(Block):
    """Evidence bundles in S3-compatible storage (AWS S3, MinIO, Cloudflare R2, …)."""

    _block_type_name = "Longrun S3 Evidence Store"
    _block_type_slug = S3_BLOCK_SLUG
    _description = "Where longrun uploads evidence bundles and manifests: a bucket and key prefix in S3-compatible storage."

    bucket: str = Field(..., description="Bucket name.")
    prefix: str = Field("", description="Key prefix; objects go to <prefix>/<jobId>/<jobId>.tar.gz and .manifest.json.")
    endpoint_url: str | None = Field(
        None, description="Endpoint for non-AWS stores, e.g. http://minio:9000 or https://<account>.r2.cloudflarestorage.com."
    )
    region_name: str | None = Field(None, description="Region, e.g. us-east-1 (AWS) or auto (R2).")
    aws_access_key_id: SecretStr | None = Field(None, description="Access key id; empty: boto3's usual credential chain.")
    aws_secret_access_key: SecretStr | None = Field(None, description="Secret access key; empty: boto3's usual credential chain.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="'path' for MinIO and most self-hosted stores; 'virtual' or 'auto' for AWS and R2."
    )
    max_attempts: int = Field(5, ge=1, description="Tries per S3 call (tenacity; botocore's own retries are off).")
    max_seconds: float = Field(120.0, gt=0, description="Time bound for one S3 call including its retries.")

    def store(self) -> S3Store:
        return S3Store(
            bucket=self.bucket,
            prefix=self.prefix,
            endpoint_url=self.endpoint_url,
            region_name=self.region_name,
            access_key_id=_secret(self.aws_access_key_id),
            secret_access_key=_secret(self.aws_secret_access_key),
            addressing_style=self.addressing_style,
            max_attempts=self.max_attempts,
            max_seconds=self.max_seconds,
        )


class LocalEvidenceStore(Block):
    """Evidence bundles copied into a directory (a mounted share, a local mirror)."""

    _block_type_name = "Longrun Local Evidence Store"
    _block_type_slug = LOCAL_BLOCK_SLUG
    _description = "Where longrun copies evidence bundles and manifests: a directory."

    path: str = Field(..., description="Absolute directory; objects go to <path>/<jobId>/<jobId>.tar.gz and .manifest.json.")

    def store(self) -> LocalDirStore:
        return LocalDirStore(Path(self.path))


#: Block type slug → class (``longrun.storage.resolve_store`` loads through this).
BLOCK_CLASSES: dict[str, type[Block]] = {
    S3EvidenceStore._block_type_slug: S3EvidenceStore,
    LocalEvidenceStore._block_type_slug: LocalEvidenceStore,
}


def load_block_store(slug: str, name: str) -> EvidenceStore:
    """Load a saved longrun evidence block and return its core store."""
    cls = BLOCK_CLASSES[slug]
    try:
        block = cls.load(name, _sync=True)
    except ValueError as exc:  # Prefect: "Unable to find block document named …"
        raise EvidenceStoreInvalid(f"no {slug} block named {name!r}: {exc}") from exc
    except Exception as exc:  # the Prefect API is unreachable, or similar
        raise EvidenceStoreError(f"could not load block {slug}/{name}: {type(exc).__name__}: {exc}") from exc
    return block.store()  # type: ignore[attr-defined, no-any-return]


set_block_loader(load_block_store)


def _secret_value(name: str) -> str:
    """The value of the Prefect Secret block ``name`` (a signing key's PEM)."""
    from prefect.blocks.system import Secret

    value = Secret.load(name).get()
    return value if isinstance(value, str) else str(value)


set_key_loader(_secret_value)
