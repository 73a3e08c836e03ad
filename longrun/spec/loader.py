"""Load a job spec: bytes → ``yaml.safe_load`` → ``JobSpec.model_validate``.

Raw dicts stop here. Every problem in a spec is reported at once, each with
its file and JSON path (``stages[2].timeout``), as a ``SpecError``
(``job_invalid_spec``). A missing file is ``job_not_found``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from longrun.errors import JobNotFound, LongrunError, Problem, SpecError
from longrun.spec.checks import cross_check
from longrun.spec.models import JobSpec


@dataclass(frozen=True)
class LoadedSpec:
    spec: JobSpec
    source: Path | None
    job_id: str
    canonical: str

    @property
    def base_dir(self) -> Path:
        """Directory that relative template paths are resolved against."""
        return self.source.parent if self.source is not None else Path.cwd()


#: Format of a stored ``spec.json``: ``{"spec_schema": 2, "spec": {...}}``. Schema 1 (longrun
#: before 0.2) stored the bare spec; :func:`load_canonical` reads both.
SPEC_SCHEMA = 2


def spec_document(spec: JobSpec) -> dict[str, Any]:
    """The spec as a dict: every effective field (defaults filled in)."""
    return spec.model_dump(mode="json")


def canonical_json(spec: JobSpec) -> str:
    """What ``spec.json`` holds: the schema version and every effective field, sorted keys, no whitespace."""
    return _compact({"spec_schema": SPEC_SCHEMA, "spec": spec_document(spec)})


def identity_json(spec: JobSpec) -> str:
    """What the job id hashes: the spec without the fields left at their defaults.

    A field added later with a default changes no id, and a default written
    out gives the same id as leaving it out (SPEC S3, docs/concepts.md#job-ids).
    """
    return _compact(spec.model_dump(mode="json", exclude_defaults=True))


def job_id_for(spec: JobSpec) -> str:
    """``sha256(identity_json(spec))[:12]``."""
    return hashlib.sha256(identity_json(spec).encode("utf-8")).hexdigest()[:12]


def _compact(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "$"


def problems_from_validation(exc: ValidationError, file: str | None) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        # Discriminated unions add the tag ('command_pass') to the location;
        # it is not part of the user's document, so drop it.
        loc = _drop_union_tag(tuple(err["loc"]))
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        base = format_loc(loc)
        if err["type"] == "value_error" and base == "$":
            # Cross-field checks report "path: message" lines.
            for line in msg.splitlines():
                path, _, text = line.partition(": ")
                problems.append(Problem(path=path if base == "$" else f"{base}.{path}", message=text, file=file))
            continue
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "field required"
        problems.append(Problem(path=base, message=msg, file=file))
    return problems


_GATE_KINDS = {"command_pass", "build_pass", "test_pass", "file_changed", "artifact_exists", "approval"}


def _drop_union_tag(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the gate kind pydantic inserts after ``quality_gates.<group>[i]``.

    It is not part of the user's document; the same word elsewhere (an env
    key named ``approval``) is.
    """
    if len(loc) > 3 and loc[0] == "quality_gates" and isinstance(loc[2], int) and loc[3] in _GATE_KINDS:
        return loc[:3] + loc[4:]
    return loc


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with two fixes for specs.

    It refuses duplicate mapping keys instead of keeping the last, and it reads
    booleans as YAML 1.2 does: only ``true``/``false``. (YAML 1.1 turns ``on``,
    ``no``, ``yes`` and ``off`` into booleans, so ``id: no`` would not be a string.)
    """


#: A spec larger than this many bytes is refused (``job_invalid_spec``) before it is parsed.
MAX_SPEC_BYTES = 1 << 20
#: Mappings and lists may nest this deep, no deeper (YAML, JSON, and through aliases).
MAX_SPEC_DEPTH = 20
#: A spec may hold this many values (scalars, lists, mappings) once aliases are expanded.
MAX_SPEC_NODES = 100_000


def _compose_node(self: _UniqueKeyLoader, parent: Any, index: Any) -> Any:
    """PyYAML composes recursively: stop at ``MAX_SPEC_DEPTH`` instead of a ``RecursionError``."""
    depth = getattr(self, "_longrun_depth", 0) + 1
    if depth > MAX_SPEC_DEPTH + 1:
        event = self.peek_event()
        raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_SPEC_DEPTH} levels", event.start_mark)
    self._longrun_depth = depth
    try:
        return yaml.composer.Composer.compose_node(self, parent, index)
    finally:
        self._longrun_depth = depth - 1


_UniqueKeyLoader.compose_node = _compose_node

_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str | int | float | bool | None):
            raise yaml.constructor.ConstructorError(
                None, None, f"a mapping key must be a plain scalar, not a {type(key).__name__}", key_node.start_mark
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _limit_problem(data: Any) -> str | None:
    """What makes an already parsed spec too big to validate, or None.

    Walks the value once, iteratively, and stops at the first problem, so a
    "billion laughs" of aliases or a self-referencing alias costs at most
    ``MAX_SPEC_NODES`` steps: more values than that, nesting deeper than
    ``MAX_SPEC_DEPTH``, a string that is not valid Unicode (a lone surrogate
    from a ``\\ud800`` escape), or a value JSON cannot hold (bytes, dates,
    sets from YAML tags).
    """
    stack: list[tuple[Any, int]] = [(data, 0)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_SPEC_NODES:
            return f"more than {MAX_SPEC_NODES} values (after aliases are expanded)"
        if depth > MAX_SPEC_DEPTH:
            return f"nested deeper than {MAX_SPEC_DEPTH} levels"
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "a string holds a lone surrogate (not valid Unicode)"
        elif isinstance(value, dict):
            stack.extend((x, depth + 1) for pair in value.items() for x in pair)
        elif isinstance(value, list):
            stack.extend((x, depth + 1) for x in value)
        elif value is not None and not isinstance(value, (bool, int, float)):
            return f"a value of YAML type {type(value).__name__} (from a tag such as !!binary or !!timestamp); use plain strings"
    return None


def parse_spec_text(text: str, *, file: str | None = None) -> JobSpec:
    """Parse YAML or JSON text (JSON is YAML) into a validated ``JobSpec``.

    Refused with ``job_invalid_spec`` before validation: text over
    ``MAX_SPEC_BYTES``, nesting over ``MAX_SPEC_DEPTH``, more than
    ``MAX_SPEC_NODES`` values, strings that are not valid Unicode.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SPEC_BYTES:
        message = f"the spec is {size} bytes; the limit is {MAX_SPEC_BYTES}"
        raise SpecError([Problem(path="$", message=message, file=file)], file=file)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except RecursionError:
        raise SpecError(
            [Problem(path="$", message=f"nested deeper than {MAX_SPEC_DEPTH} levels", file=file)], file=file
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([Problem(path="$", message=f"YAML syntax error at {where}: {problem}", file=file)], file=file) from None
    if not isinstance(data, dict):
        kind = "empty document" if data is None else type(data).__name__
        raise SpecError([Problem(path="$", message=f"a job spec is a mapping, got {kind}", file=file)], file=file)
    return validate_spec_data(data, file=file)


def validate_spec_data(data: dict[str, Any], *, file: str | None = None) -> JobSpec:
    if (why := _limit_problem(data)) is not None:
        raise SpecError([Problem(path="$", message=why, file=file)], file=file)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        problems = problems_from_validation(exc, file)
    # Field errors stop pydantic before the cross-field checks; run them on the
    # raw data so that every problem is reported at once.
    known = {(p.path, p.message) for p in problems}
    for path, message in cross_check(data):
        if (path, message) not in known:
            problems.append(Problem(path=path, message=message, file=file))
    raise SpecError(problems, file=file)


def load_spec(path: str | Path) -> LoadedSpec:
    """Read, parse and validate a spec file."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)  # no more than the limit is ever read
    except FileNotFoundError:
        raise JobNotFound(f"no job spec at {str(path)!r}") from None
    except IsADirectoryError:
        raise JobNotFound(f"{str(path)!r} is a directory, not a job spec") from None
    except PermissionError as exc:
        raise JobNotFound(f"cannot read {str(path)!r}: {exc.strerror}") from None
    if len(raw) > MAX_SPEC_BYTES:
        message = f"the spec is larger than {MAX_SPEC_BYTES} bytes, the limit"
        raise SpecError([Problem(path="$", message=message, file=str(path))], file=str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(path="$", message=f"not UTF-8: {exc}", file=str(path))], file=str(path)) from None
    spec = parse_spec_text(text, file=str(path))
    return LoadedSpec(spec=spec, source=p.resolve(), job_id=job_id_for(spec), canonical=canonical_json(spec))


def load_canonical(text: str, *, file: str | None = None) -> LoadedSpec:
    """Load a job's stored spec (``spec.json``), migrating older schemas on read.

    The text is kept as stored (``canonical``); the caller keeps the job's
    stored id (ids are never recomputed for an existing job).
    """
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise SpecError([Problem(path="$", message=f"not valid JSON: {exc}", file=file)], file=file) from None
    data = stored_spec_data(doc, file=file)
    spec = validate_spec_data(data, file=file)
    return LoadedSpec(spec=spec, source=None, job_id=job_id_for(spec), canonical=text.rstrip("\n"))


def stored_spec_data(doc: Any, *, file: str | None = None) -> dict[str, Any]:
    """The spec dict inside a stored ``spec.json`` of any known schema."""
    if isinstance(doc, dict) and "spec_schema" in doc:
        schema = doc["spec_schema"]
        if schema != SPEC_SCHEMA or not isinstance(doc.get("spec"), dict):
            raise LongrunError(
                f"{file or 'spec.json'} has spec_schema {schema!r}; this longrun reads schemas 1 to {SPEC_SCHEMA}",
                code="spec_schema_unsupported",
            )
        return dict(doc["spec"])
    if isinstance(doc, dict):
        return doc  # schema 1: the bare spec
    raise SpecError([Problem(path="$", message="a stored spec must be a JSON object", file=file)], file=file)
