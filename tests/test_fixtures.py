"""Wider-scoped fixtures are set up once, in the pytest process."""

from __future__ import annotations

import pytest
from conftest import CONTAINER
from helpers import run

pytestmark = pytest.mark.requires(*CONTAINER)

FIXTURES = """
import os
import pytest

LOG = os.path.join(os.path.dirname(__file__), "events.log")

def log(event):
    # Appends from the pytest process reach the host; appends from inside a
    # container land in its discarded upper layer.
    with open(LOG, "a") as handle:
        handle.write(event + "\\n")

@pytest.fixture(scope="session")
def session_resource():
    log(f"session setup {os.getpid()}")
    yield os.getpid()
    log("session teardown")

@pytest.fixture(scope="module")
def module_resource(request):
    name = request.module.__name__
    log(f"module setup {name}")
    yield name
    log(f"module teardown {name}")

@pytest.fixture
def function_resource():
    log("function setup")
    yield "function"
    log("function teardown")
"""


def test_session_and_module_fixtures_run_once_in_pytest(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FIXTURES)
    test_body = """
        import os
        from pytest_isolate import isolated

        @isolated
        def test_{n}(session_resource, module_resource, function_resource):
            assert session_resource != os.getpid()  # set up in pytest, used in the container
            assert function_resource == "function"
    """
    pytester.makepyfile(
        test_a="\n".join(test_body.format(n=n) for n in (1, 2)),
        test_b=test_body.format(n=3),
    )
    result = run(pytester)
    result.assert_outcomes(passed=3)
    events = (pytester.path / "events.log").read_text().splitlines()
    session_pid = events[0].split()[-1]
    assert events == [
        f"session setup {session_pid}",
        "module setup test_a",
        "module teardown test_a",
        "module setup test_b",
        "module teardown test_b",
        "session teardown",
    ]


def test_class_fixture_and_failing_session_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from pytest_isolate import isolated

        calls = []

        @pytest.fixture(scope="session")
        def broken():
            raise RuntimeError("session fixture failed")

        @isolated
        def test_uses_broken(broken):
            raise AssertionError("body ran")

        @pytest.fixture(scope="class")
        def counter():
            calls.append(1)
            return len(calls)

        @isolated
        class TestClass:
            def test_one(self, counter):
                assert counter == 1

            def test_two(self, counter):
                assert counter == 1
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["ERROR test_class_fixture_and_failing_session_fixture.py::test_uses_broken - RuntimeError: session fixture failed"])


def test_fixture_teardown_error_in_parent(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from pytest_isolate import isolated

        @pytest.fixture(scope="module")
        def fragile():
            yield
            raise RuntimeError("module teardown failed")

        @isolated
        def test_uses_fragile(fragile):
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["ERROR test_fixture_teardown_error_in_parent.py::test_uses_fragile - RuntimeError: module teardown failed"])


XUNIT_MODULES = {
    "test_a": """
        def setup_module():
            print("setup_module of a")

        def teardown_module():
            print("teardown_module of a")

        def test_first():
            pass

        def test_plain():
            pass

        def test_last():
            pass
    """,
    "test_b": """
        def setup_module():
            raise RuntimeError("setup_module of b failed")

        def test_one():
            pass

        def test_two():
            pass
    """,
    "test_c": """
        def test_after():
            pass
    """,
}


SECTIONS_CONFTEST = """
def pytest_runtest_logreport(report):
    for name, content in report.sections:
        if name.startswith("Captured stdout"):
            print(f"\\nSECTION {report.nodeid} {report.when} {name}: {content.strip()}")
"""


def test_xunit_module_setup_and_teardown_as_in_a_plain_run(pytester: pytest.Pytester) -> None:
    # Tests with nothing of their own to set up or tear down in pytest spare
    # the parent's capture (scopes.nothing_to_set_up / nothing_to_tear_down):
    # a module's setup and teardown output still lands in the first and last
    # test's reports, and a module whose setup failed fails every one of its
    # tests with that error, exactly as in a plain run.
    pytester.makeconftest(SECTIONS_CONFTEST)
    pytester.makepyfile(**XUNIT_MODULES)
    plain = run(pytester, "-p", "no:isolate", "-rE")
    isolated = run(pytester, "--isolate", "-rE")
    plain.assert_outcomes(passed=4, errors=2)
    isolated.assert_outcomes(passed=4, errors=2)
    sections = [line for line in isolated.outlines if line.startswith(("SECTION", "ERROR"))]
    assert sections == [line for line in plain.outlines if line.startswith(("SECTION", "ERROR"))]
    assert sections == [
        "SECTION test_a.py::test_first setup Captured stdout setup: setup_module of a",
        "SECTION test_a.py::test_first call Captured stdout setup: setup_module of a",
        "SECTION test_a.py::test_first teardown Captured stdout setup: setup_module of a",
        "SECTION test_a.py::test_last teardown Captured stdout teardown: teardown_module of a",
        "ERROR test_b.py::test_one - RuntimeError: setup_module of b failed",
        "ERROR test_b.py::test_two - RuntimeError: setup_module of b failed",
    ]
