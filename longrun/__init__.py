"""longrun: a governed, resumable long-run job engine.

This package is the Prefect-free core: spec models, compiler, journal, state,
gates and checkpoints. The Prefect adapters live in ``longrun.flows`` and
``longrun.blocks`` and are only imported when a job actually runs.

The names below load on first use, so that commands that only read a journal
(``status``, ``list``, ``tail``) do not pay for building the spec models.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LongrunError": "longrun.errors",
    "Problem": "longrun.errors",
    "SpecError": "longrun.errors",
    "JobSpec": "longrun.spec.models",
    "LoadedSpec": "longrun.spec.loader",
    "canonical_json": "longrun.spec.loader",
    "job_id_for": "longrun.spec.loader",
    "load_spec": "longrun.spec.loader",
}

__all__ = [
    "JobSpec",
    "LoadedSpec",
    "LongrunError",
    "Problem",
    "SpecError",
    "__version__",
    "canonical_json",
    "job_id_for",
    "load_spec",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'longrun' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
