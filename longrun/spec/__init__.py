"""Job spec v1: models, loader and schema export."""

from longrun.spec.loader import LoadedSpec, canonical_json, job_id_for, load_spec, parse_spec_text
from longrun.spec.models import JobSpec, SPEC_VERSION

__all__ = ["JobSpec", "LoadedSpec", "SPEC_VERSION", "canonical_json", "job_id_for", "load_spec", "parse_spec_text"]
