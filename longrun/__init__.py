"""longrun: a governed, resumable long-run job engine.

This package is the Prefect-free core: spec models, compiler, journal, state,
gates and checkpoints. The Prefect adapters live in ``longrun.flows`` and
``longrun.blocks`` and are only imported when a job actually runs.
"""

from longrun.errors import LongrunError, Problem, SpecError
from longrun.spec import JobSpec, LoadedSpec, canonical_json, job_id_for, load_spec

__version__ = "0.1.0"

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
