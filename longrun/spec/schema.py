"""Generate the JSON Schema for job specs from the pydantic models.

``python -m longrun.spec.schema`` rewrites ``jobspecs/job.schema.json``;
``python -m longrun.spec.schema --check`` exits 1 when the committed file drifts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from longrun import atomicio
from longrun.spec.models import JobSpec

SCHEMA_ID = "https://longrun.dev/schemas/job.v1.schema.json"


def build_schema() -> dict:
    schema = JobSpec.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def render_schema() -> str:
    return json.dumps(build_schema(), indent=2, sort_keys=True) + "\n"


def default_schema_path() -> Path:
    return Path(__file__).resolve().parents[2] / "jobspecs" / "job.schema.json"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = default_schema_path()
    text = render_schema()
    if "--check" in args:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} is out of date; run: python -m longrun.spec.schema", file=sys.stderr)
            return 1
        return 0
    atomicio.write_atomic(path, text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
