"""parse_junit on a real pytest report and on hand-written variants."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from longrun.errors import LongrunError
from longrun.execution.junit import empty_report, parse_junit

SAMPLE_TESTS = textwrap.dedent(
    """
    import pytest

    @pytest.fixture
    def broken():
        raise RuntimeError("fixture blew up")

    def test_pass():
        assert True

    def test_fail():
        assert 1 == 2

    def test_error(broken):
        pass

    def test_skip():
        pytest.skip("not today")
    """
)


def write(tmp_path: Path, xml: str, name: str = "report.xml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(xml).strip())
    return path


def test_real_pytest_report(tmp_path):
    (tmp_path / "test_sample.py").write_text(SAMPLE_TESTS)
    report = tmp_path / "junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", "test_sample.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = parse_junit(report)
    assert result == {
        "format": "junit",
        "tests": 4,
        "passed": 1,
        "failed": 1,
        "errors": 1,
        "skipped": 1,
        "pass_rate": pytest.approx(1 / 3),
        "failing": ["test_sample::test_error", "test_sample::test_fail"],
        "source": str(report),
    }


def test_single_testsuite_root_and_classnames(tmp_path):
    path = write(
        tmp_path,
        """
        <?xml version="1.0" encoding="utf-8"?>
        <testsuite name="s" tests="3">
          <testcase classname="pkg.TestA" name="test_ok" time="0.1"/>
          <testcase classname="pkg.TestA" name="test_bad[1-2]"><failure message="x">trace</failure></testcase>
          <testcase name="bare"><error message="boom"/></testcase>
        </testsuite>
        """,
    )
    result = parse_junit(path)
    assert (result["tests"], result["passed"], result["failed"], result["errors"]) == (3, 1, 1, 1)
    assert result["failing"] == ["bare", "pkg.TestA::test_bad[1-2]"]
    assert result["pass_rate"] == pytest.approx(1 / 3)


def test_nested_suites_are_counted_from_cases_not_attributes(tmp_path):
    path = write(
        tmp_path,
        """
        <testsuites tests="999" failures="999">
          <testsuite name="outer" tests="999">
            <testcase classname="a" name="t1"/>
            <testsuite name="inner">
              <testcase classname="b" name="t2"/>
              <testcase classname="b" name="t3"><skipped message="later"/></testcase>
              <testcase classname="b" name="t4"><failure/><error/></testcase>
            </testsuite>
          </testsuite>
          <testsuite name="other"><testcase classname="c" name="t5"><failure/></testcase></testsuite>
        </testsuites>
        """,
    )
    result = parse_junit(path)
    assert {k: result[k] for k in ("tests", "passed", "failed", "errors", "skipped")} == {
        "tests": 5,
        "passed": 2,
        "failed": 1,
        "errors": 1,  # a case with both error and failure counts once, as an error
        "skipped": 1,
    }
    assert result["pass_rate"] == pytest.approx(2 / 4)
    assert result["failing"] == ["b::t4", "c::t5"]


def test_no_tests_or_all_skipped_gives_pass_rate_one(tmp_path):
    assert parse_junit(write(tmp_path, "<testsuites/>"))["pass_rate"] == 1.0
    only_skipped = write(tmp_path, '<testsuite><testcase name="s"><skipped/></testcase></testsuite>', "b.xml")
    result = parse_junit(only_skipped)
    assert (result["tests"], result["skipped"], result["pass_rate"]) == (1, 1, 1.0)


def test_namespaced_tags_are_accepted(tmp_path):
    path = write(tmp_path, '<t:testsuite xmlns:t="urn:x"><t:testcase name="a"><t:failure/></t:testcase></t:testsuite>')
    assert parse_junit(path)["failing"] == ["a"]


def test_missing_file(tmp_path):
    with pytest.raises(LongrunError) as info:
        parse_junit(tmp_path / "nope.xml")
    assert info.value.code == "junit_missing"


@pytest.mark.parametrize(
    "xml",
    [
        "<testsuite><testcase name='a'></testsuite>",
        "not xml at all",
        "",
        "<html><body/></html>",
    ],
)
def test_malformed_or_foreign_xml(tmp_path, xml):
    with pytest.raises(LongrunError) as info:
        parse_junit(write(tmp_path, xml))
    assert info.value.code == "junit_invalid"


@pytest.mark.parametrize(
    "xml",
    [
        """<?xml version="1.0"?>
        <!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>
        <testsuite><testcase name="&lol2;"/></testsuite>""",
        """<?xml version="1.0"?>
        <!DOCTYPE testsuite SYSTEM "file:///etc/passwd">
        <testsuite/>""",
        "<!ENTITY x 'y'><testsuite/>",
    ],
)
def test_dtd_and_entities_are_refused(tmp_path, xml):
    with pytest.raises(LongrunError) as info:
        parse_junit(write(tmp_path, xml))
    assert info.value.code == "junit_invalid"
    assert "DTD" in info.value.message


def test_doctype_refused_in_utf16_too(tmp_path):
    path = tmp_path / "report.xml"
    xml = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE t [<!ENTITY a "b">]><testsuite/>'
    path.write_bytes(xml.encode("utf-16"))
    with pytest.raises(LongrunError) as info:
        parse_junit(path)
    assert info.value.code == "junit_invalid" and "DTD" in info.value.message


def test_utf16_report_without_dtd_parses(tmp_path):
    path = tmp_path / "report.xml"
    xml = '<?xml version="1.0" encoding="UTF-16"?><testsuite><testcase name="é"/></testsuite>'
    path.write_bytes(xml.encode("utf-16"))
    assert parse_junit(path)["passed"] == 1


def test_empty_report_has_same_shape_and_cannot_pass():
    report = empty_report("command crashed before writing junit", source="out/junit.xml")
    assert report["error"] == "command crashed before writing junit"
    assert report["source"] == "out/junit.xml"
    assert report["pass_rate"] == 0.0
    assert all(report[k] == 0 for k in ("tests", "passed", "failed", "errors", "skipped"))
    assert report["failing"] == [] and report["format"] == "junit"
    real_keys = {"format", "tests", "passed", "failed", "errors", "skipped", "pass_rate", "failing", "source"}
    assert set(report) == real_keys | {"error"}
