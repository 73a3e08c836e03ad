"""Summarise a JUnit XML report (as written by ``pytest --junitxml``) for the test gate.

The root may be ``<testsuites>`` or a single ``<testsuite>``; suites may nest.
Counts come from the ``<testcase>`` elements themselves, not from the suites'
``tests=``/``failures=`` attributes, so nested or hand-merged reports cannot
double count. Each case lands in exactly one bucket, in this order of
precedence: ``error`` (an ``<error>`` child, e.g. a fixture that blew up),
``failed`` (a ``<failure>`` child), ``skipped`` (a ``<skipped>`` child,
including pytest's xfail), otherwise ``passed``.

Documents with a DTD are refused outright (``<!DOCTYPE``/``<!ENTITY``), so
entity-expansion and external-entity tricks never reach the parser.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from xml.parsers import expat

from longrun.errors import LongrunError, PathEscape
from longrun.storage.paths import read_nofollow

__all__ = ["empty_report", "parse_junit"]

_FORBIDDEN = (b"<!DOCTYPE", b"<!ENTITY")
_ROOTS = ("testsuites", "testsuite")


def empty_report(reason: str, *, source: str | None = None) -> dict:
    """The :func:`parse_junit` shape with every number zero and ``error`` set.

    For when there is nothing to parse (the command crashed before writing
    the report). ``pass_rate`` is 0.0 here, not 1.0: a gate must never pass
    on a report that does not exist.
    """
    return {
        "format": "junit",
        "tests": 0,
        "passed": 0,
        "failed": 0,
        "errors": 0,
        "skipped": 0,
        "pass_rate": 0.0,
        "failing": [],
        "source": source,
        "error": reason,
    }


def parse_junit(path: Path, *, base: Path | None = None) -> dict:
    """Parse the JUnit XML at ``path`` into the gate's summary dict.

    Keys: ``format`` ("junit"), ``tests``, ``passed``, ``failed``, ``errors``,
    ``skipped``, ``pass_rate`` (passed / (tests - skipped), 1.0 when nothing
    ran), ``failing`` (sorted, de-duplicated ``classname::name`` ids of failed
    and errored cases) and ``source`` (the path as a string).

    Raises ``LongrunError`` with code ``junit_missing`` if the file does not
    exist and ``junit_invalid`` if it is not a JUnit report we accept, or if
    it is a symlink or not a regular file (opened without following symlinks,
    below ``base`` when given, and checked with ``fstat`` after opening).
    """
    source = str(path)
    try:
        data = read_nofollow(Path(path), base=base)
    except FileNotFoundError as exc:
        raise LongrunError(f"JUnit report not found: {source}", code="junit_missing") from exc
    except PathEscape as exc:
        raise _invalid(source, exc.message) from None
    except OSError as exc:
        raise _invalid(source, f"cannot read: {exc}") from exc
    root = _parse_safely(data, source)
    if _local(root.tag) not in _ROOTS:
        raise _invalid(source, f"root element is <{root.tag}>, expected <testsuites> or <testsuite>")

    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failing: set[str] = set()
    for case in root.iter():
        if _local(case.tag) != "testcase":
            continue
        outcome = _outcome(case)
        counts[outcome] += 1
        if outcome in ("failed", "errors"):
            failing.add(_case_id(case))

    tests = sum(counts.values())
    ran = tests - counts["skipped"]
    return {
        "format": "junit",
        "tests": tests,
        **counts,
        "pass_rate": counts["passed"] / ran if ran else 1.0,
        "failing": sorted(failing),
        "source": source,
    }


def _parse_safely(data: bytes, source: str) -> ET.Element:
    """Parse ``data`` after refusing any DTD, in whatever encoding it declares."""
    if any(marker in data for marker in _FORBIDDEN):
        raise _invalid(source, "documents with a DTD (<!DOCTYPE or <!ENTITY) are refused")
    # The byte check above misses non-ASCII-compatible encodings (UTF-16);
    # expat decodes those itself and reports a doctype wherever it appears.
    guard = expat.ParserCreate()
    guard.StartDoctypeDeclHandler = _refuse_doctype
    try:
        guard.Parse(data, True)
    except _DoctypeRefused as exc:
        raise _invalid(source, "documents with a DTD (<!DOCTYPE or <!ENTITY) are refused") from exc
    except expat.ExpatError as exc:
        raise _invalid(source, f"malformed XML: {exc}") from exc
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:  # pragma: no cover - expat above already accepted it
        raise _invalid(source, f"malformed XML: {exc}") from exc


class _DoctypeRefused(Exception):
    pass


def _refuse_doctype(*_args: object) -> None:
    raise _DoctypeRefused()


def _outcome(case: ET.Element) -> str:
    children = {_local(child.tag) for child in case}
    if "error" in children:
        return "errors"
    if "failure" in children:
        return "failed"
    if "skipped" in children:
        return "skipped"
    return "passed"


def _case_id(case: ET.Element) -> str:
    name = case.get("name", "")
    classname = case.get("classname", "")
    return f"{classname}::{name}" if classname else name


def _local(tag: object) -> str:
    """Tag name without an XML namespace (``{ns}testcase`` → ``testcase``)."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _invalid(source: str, why: str) -> LongrunError:
    return LongrunError(f"JUnit report {source}: {why}", code="junit_invalid")
