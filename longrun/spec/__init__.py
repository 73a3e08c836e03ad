"""Job spec v1: models, loader and schema export."""

from longrun.spec.loader import LoadedSpec, canonical_json, job_id_for, load_spec, parse_spec_text
from longrun.spec.models import SPEC_VERSION, JobSpec

__all__ = ["SPEC_VERSION", "JobSpec", "LoadedSpec", "canonical_json", "job_id_for", "load_spec", "parse_spec_text"]
