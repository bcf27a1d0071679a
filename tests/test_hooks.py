"""The plugin's own hooks, implemented in a conftest."""

from __future__ import annotations

import json

import pytest
from conftest import CONTAINER
from helpers import failure_lines, run

pytestmark = pytest.mark.requires(*CONTAINER)


def test_three_hooks_from_a_conftest(pytester: pytest.Pytester) -> None:
    data = pytester.mkdir("shared-data")
    (data / "input.txt").write_text("from the host")
    pytester.makeconftest(
        f"""
        import dataclasses, json, os

        def pytest_isolate_modify_spec(item, spec):
            if "small" in item.name:
                return dataclasses.replace(spec, hostname="from-hook")
            return None

        def pytest_isolate_mount_plan(item, spec, plan):
            plan.add_tmpfs("/scratch", size=4 << 20)
            plan.add_bind({str(data)!r}, "/data", readonly=True)

        def pytest_isolate_usage(item, spec, usage):
            # Runs in the pytest process: this file reaches the host.
            with open("usage.jsonl", "a") as handle:
                handle.write(json.dumps({{"test": item.name, "peak": usage.peak_memory,
                                          "cpu": usage.cpu_seconds}}) + "\\n")
        """
    )
    pytester.makepyfile(
        """
        import os, socket
        import pytest
        from pytest_isolate import isolated

        @isolated
        def test_small_spec():
            assert socket.gethostname() == "from-hook"

        @isolated
        def test_mounts():
            assert open("/data/input.txt").read() == "from the host"
            with pytest.raises(OSError) as error:
                open("/data/new.txt", "w")
            assert error.value.errno == 30  # EROFS
            with open("/scratch/file", "w") as handle:
                handle.write("scratch")
            assert os.statvfs("/scratch").f_blocks * os.statvfs("/scratch").f_frsize == 4 << 20
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)
    usage = [json.loads(line) for line in (pytester.path / "usage.jsonl").read_text().splitlines()]
    assert [entry["test"] for entry in usage] == ["test_small_spec", "test_mounts"]
    for entry in usage:
        assert entry["peak"] > 0 and entry["cpu"] > 0
    assert not (data / "new.txt").exists()


def test_modify_spec_returning_garbage_is_reported(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        def pytest_isolate_modify_spec(item, spec):
            return {"mem": "1G"}
        """
    )
    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated
        def test_it():
            pass
        """
    )
    result = run(pytester)
    assert failure_lines(result) == [
        "ERROR test_modify_spec_returning_garbage_is_reported.py::test_it - pytest_isolate_modify_spec returned "
        "{'mem': '1G'} for test_modify_spec_returning_garbage_is_reported.py::test_it; expected an IsolationSpec or None"
    ]
