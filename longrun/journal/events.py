"""Frozen, versioned journal events.

One journal line is one JSON object::

    {"seq": 7, "type": "stage_finished", "version": "job_event_v1",
     "ts": "2025-01-01T00:00:00.000000Z", "job_id": "0123456789ab",
     "payload": {...}}

Each event type is one envelope class (``type: Literal[...]``) carrying one
payload class (:mod:`longrun.journal.payloads`), built from the one table
:data:`~longrun.journal.payloads.PAYLOADS`; :func:`parse_event` validates a raw
dict by its ``type``; ``EventAdapter`` (the discriminated union of every envelope) is built on first use.

Versioning: lines are read through :func:`parse_event`, which upcasts older
versions step by step (``_UPCASTERS``: version → (next version, step)) until
the current :data:`EVENT_VERSION`; a version with no path raises
:class:`EventVersionUnsupported`. To introduce ``job_event_v2``: set
``EVENT_VERSION = "job_event_v2"``, change the envelope's version literal and
register ``_UPCASTERS["job_event_v1"] = ("job_event_v2", v1_to_v2)``; golden
v1 journals in ``tests/fixtures/journals`` keep pinning the old shape.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Union, cast

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    field_serializer,
    field_validator,
)

from longrun.errors import EventVersionUnsupported, JournalCorrupt
from longrun.journal.payloads import JOB_ID_PATTERN, PAYLOADS, Payload, format_ts

EVENT_VERSION = "job_event_v1"


class Event(BaseModel):
    """The envelope every journal line shares; subclasses fix ``type`` and ``payload``."""

    # Built on first use: a command that reads a journal pays only for the event types in it.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    seq: int = Field(ge=1)
    type: str
    version: Literal["job_event_v1"] = EVENT_VERSION  # type: ignore[assignment]
    ts: AwareDatetime
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    payload: Payload
    #: The hash chain: sha256 of the previous line as written (its bytes with the newline), or for
    #: the first event the spec's sha256. None on lines written before the chain (left out of the line).
    prev: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @field_validator("ts")
    @classmethod
    def _to_utc(cls, v: datetime) -> datetime:
        return v.astimezone(UTC)

    @field_serializer("ts")
    def _ser_ts(self, v: datetime) -> str:
        return format_ts(v)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict of this event (what a journal line holds).

        Optional fields added after a type was first written
        (``Payload.omit_if_none``) are left out while they are None, so a line
        from a writer that did not know them reads back byte for byte.
        """
        out = self.model_dump(mode="json")
        if out.get("prev") is None:
            del out["prev"]
        payload = out["payload"]
        for name in type(self.payload).omit_if_none:
            if payload.get(name, 0) is None:
                del payload[name]
        for name, value in self.payload:  # nested payloads (a stage's usage) omit theirs too
            if isinstance(value, Payload) and isinstance(payload.get(name), dict):
                for inner in type(value).omit_if_none:
                    if payload[name].get(inner, 0) is None:
                        del payload[name][inner]
        return out

    def to_line(self) -> bytes:
        """One compact JSON line, UTF-8, ending in ``\\n``."""
        text = json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))
        return (text + "\n").encode("utf-8")


def _envelope(type_name: str, payload: type[Payload]) -> type[Event]:
    name = "".join(part.title() for part in type_name.split("_")) + "Event"
    return create_model(
        name,
        __base__=Event,
        __module__=__name__,
        # Literal and Union are subscripted at run time with values built from
        # the payload table; cast(Any, ...) keeps the check free of ignores whose
        # need differs between mypy/pydantic releases.
        type=(cast(Any, Literal)[type_name], type_name),
        payload=(payload, ...),
    )


#: type name → envelope class.
EVENT_TYPES: Mapping[str, type[Event]] = {name: _envelope(name, payload) for name, payload in PAYLOADS.items()}

#: type name → payload class.
PAYLOAD_TYPES: Mapping[str, type[Payload]] = PAYLOADS


def __getattr__(name: str) -> Any:
    """``AnyEvent`` and ``EventAdapter`` (the discriminated union of every envelope), built on first use."""
    if name in ("AnyEvent", "EventAdapter"):
        members: Any = cast(Any, Union)[tuple(EVENT_TYPES.values())]
        any_event: Any = cast(Any, Annotated)[members, Field(discriminator="type")]
        globals().update(AnyEvent=any_event, EventAdapter=TypeAdapter(any_event))
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- versions

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

#: old version → (next version, step turning a raw event of old into next).
#: Empty while v1 is the only version; see the module docstring.
_UPCASTERS: dict[str, tuple[str, Upcaster]] = {}


def known_versions() -> frozenset[str]:
    """Every version :func:`parse_event` can read."""
    return frozenset({EVENT_VERSION, *_UPCASTERS})


def upcast(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Lift a raw event dict to :data:`EVENT_VERSION`, one registered step at a time.

    Raises :class:`EventVersionUnsupported` for a version with no path and
    :class:`JournalCorrupt` when the version field is missing.
    """
    event = dict(raw)
    seen: set[str] = set()
    while (version := event.get("version")) != EVENT_VERSION:
        if not isinstance(version, str):
            raise JournalCorrupt(f"event has no valid version field (got {version!r})")
        step = _UPCASTERS.get(version)
        if step is None or version in seen:
            raise EventVersionUnsupported(
                f"event version {version!r} is not supported (this longrun reads "
                f"{', '.join(sorted(known_versions()))}); upgrade longrun"
            )
        seen.add(version)
        next_version, fn = step
        event = {**fn(event), "version": next_version}
    return event


def parse_event(raw: Mapping[str, Any]) -> Event:
    """Validate one raw journal record into its typed :class:`Event`.

    Raises :class:`EventVersionUnsupported` for a version with no upcast path
    and :class:`JournalCorrupt` for an unknown type or an invalid record.
    """
    if not isinstance(raw, Mapping):
        raise JournalCorrupt(f"event must be a JSON object, got {type(raw).__name__}")
    event = upcast(raw)
    kind = event.get("type")
    if kind not in EVENT_TYPES:
        raise JournalCorrupt(f"unknown event type {kind!r} for version {EVENT_VERSION} (known: {', '.join(sorted(EVENT_TYPES))})")
    try:
        return EVENT_TYPES[str(kind)].model_validate(event)
    except ValidationError as exc:
        raise JournalCorrupt(f"invalid {kind} event: {_summarise(exc)}") from exc


def build_event(
    type: str,
    payload: Mapping[str, Any] | Payload,
    *,
    seq: int,
    job_id: str,
    ts: datetime,
    prev: str | None = None,
) -> Event:
    """Build and validate a current-version event (what the journal appends); ``prev`` links it into the chain.

    A bad event here is a caller's bug, not a corrupt journal, so this raises
    ``ValueError`` for an unknown ``type``, pydantic's ``ValidationError`` (a
    ``ValueError``) for invalid fields, and ``TypeError`` for a payload model
    of another type.
    """
    cls = EVENT_TYPES.get(type)
    if cls is None:
        raise ValueError(f"unknown event type {type!r} (known: {', '.join(sorted(EVENT_TYPES))})")
    if isinstance(payload, Payload):
        expected = PAYLOAD_TYPES[type]
        if not isinstance(payload, expected):
            raise TypeError(f"{type} takes a {expected.__name__} payload, not {payload.__class__.__name__}")
        payload = payload.model_dump(mode="json")
    declared = PAYLOAD_TYPES[type].model_fields
    unknown = sorted(set(payload) - set(declared))
    if unknown:
        raise ValueError(f"{type}: undeclared payload field(s) {', '.join(unknown)}; declare them in its payload model")
    return cls.model_validate(
        {"seq": seq, "type": type, "version": EVENT_VERSION, "ts": ts, "job_id": job_id, "payload": dict(payload), "prev": prev}
    )


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if p not in EVENT_TYPES)
        parts.append(f"{loc or '$'}: {err['msg']}")
    return "; ".join(parts)


__all__ = [
    "EVENT_TYPES",
    "EVENT_VERSION",
    "PAYLOAD_TYPES",
    "Event",
    "Upcaster",
    "build_event",
    "format_ts",
    "known_versions",
    "parse_event",
    "upcast",
]

# The envelope classes are built from the table; name them in this module so that they pickle.
for _cls in EVENT_TYPES.values():
    globals()[_cls.__name__] = _cls
