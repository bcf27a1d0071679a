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
