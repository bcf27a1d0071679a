"""What a new user hits: bad values refused before the run, the CLI, --isolate-keep, exposed endpoints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from capabilities import skip_reason
from conftest import CONTAINER
from helpers import failure_lines, run

from pytest_isolate.container.fsdiff import Change
from pytest_isolate.tmpdirs import is_bookkeeping

NEEDS_CONTAINERS = pytest.mark.requires(*CONTAINER)
PASSING = """
from pytest_isolate import isolated

@isolated
def test_fine():
    pass
"""


def test_optional_tools_skip_naming_the_package() -> None:
    assert skip_reason("fuse_overlayfs") == "needs fuse_overlayfs: install the package fuse-overlayfs (apt-get install fuse-overlayfs)"
    assert skip_reason("mmdebstrap") == "needs mmdebstrap: install the package mmdebstrap (apt-get install mmdebstrap)"
    assert skip_reason("root") == "needs root"


# -- option values: usage errors before any test runs --------------------------


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("isolate_storage=zfs", "ini option isolate_storage = zfs is invalid: expected one of auto, overlay, fuse, copy"),
        (
            "isolate_prepare=maybe",
            "ini option isolate_prepare = maybe is invalid: expected true or false (yes/no, on/off and 1/0 work too)",
        ),
        ("isolate=sometimes", "ini option isolate = sometimes is invalid: expected true or false (yes/no, on/off and 1/0 work too)"),
        (
            "isolate_net_range=999.0.0.0/99",
            "ini option isolate_net_range = 999.0.0.0/99 is invalid: expected an IPv4 network with room for at least "
            "one /30, such as 10.213.0.0/16",
        ),
        (
            "isolate_net_range=10.0.0.0/31",
            "ini option isolate_net_range = 10.0.0.0/31 is invalid: expected an IPv4 network with room for at least "
            "one /30, such as 10.213.0.0/16",
        ),
        ("isolate_report_top=many", "ini option isolate_report_top = many is invalid: expected a whole number of tests from 1 up, such as 10"),
        ("isolate_report_top=-3", "ini option isolate_report_top = -3 is invalid: expected a whole number of tests from 1 up, such as 10"),
        (
            "isolate_compare_threshold=abc",
            "ini option isolate_compare_threshold = abc is invalid: expected a fraction of growth greater than 0, such as 0.2 (20%)",
        ),
        ("isolate_compare_min_cpu=-1", "ini option isolate_compare_min_cpu = -1 is invalid: expected CPU seconds from 0 up, such as 0.5"),
        (
            "isolate_compare_min_mem=lots",
            'ini option isolate_compare_min_mem = lots is invalid: expected a size: bytes as an int, or a string such as '
            '"512K", "64M", "1.5G" or "256MiB"',
        ),
        ("isolate_keep=some", "ini option isolate_keep = some is invalid: expected one of none, failed, all"),
    ],
)
def test_bad_ini_values_are_usage_errors(pytester: pytest.Pytester, option: str, message: str) -> None:
    pytester.makepyfile(PASSING)
    result = run(pytester, "-o", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.errlines[0] == f"ERROR: {message}"
    assert "passed" not in result.stdout.str()


def test_unknown_image_names_are_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PASSING)
    for args, written in (
        (["--isolate-rootfs=nonexistent"], "--isolate-rootfs=nonexistent"),
        (["-o", "isolate_rootfs=nonexistent"], "ini option isolate_rootfs = nonexistent"),
    ):
        result = run(pytester, *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert re.fullmatch(
            rf"ERROR: {re.escape(written)} is invalid: expected a recipe or an imported image: no image named "
            r"'nonexistent': no nonexistent.toml in \S+ and no imported image of that name; "
            r"known images: debian-bookworm, debian-bookworm-tools.*",
            result.errlines[0],
        ), result.errlines


def test_bad_keep_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PASSING)
    result = run(pytester, "--isolate-keep=sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.errlines[0] == "ERROR: --isolate-keep=sometimes is invalid: expected one of none, failed, all"


def test_isolate_json_directory_is_checked_at_start(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PASSING)
    (pytester.path / "a-file").write_text("")
    result = run(pytester, "--isolate-json=a-file/out.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    directory = pytester.path / "a-file"
    assert result.errlines[0] == (
        f"ERROR: --isolate-json=a-file/out.json is invalid: expected a file in a directory that can be made; "
        f"{directory}: File exists"
    )
    result = run(pytester, f"--isolate-json={pytester.path}")
    assert result.errlines[0] == f"ERROR: --isolate-json={pytester.path} is invalid: expected the path of a file to write; this is a directory"


@NEEDS_CONTAINERS
def test_isolate_json_makes_its_directory_and_says_where(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PASSING)
    result = run(pytester, "--isolate-json=new/dir/usage.json")
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    written = pytester.path / "new" / "dir" / "usage.json"
    assert json.loads(written.read_text())["tests"][0]["nodeid"].endswith("::test_fine")
    assert any(re.fullmatch(rf"-+ pytest-isolate usage written to {re.escape(str(written))} -+", line) for line in result.outlines)


# -- bad markers: every one of the run, named ---------------------------------


def test_every_bad_marker_is_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_bad="""
        from pytest_isolate import isolated

        @isolated(mem="lots")
        def test_a(): pass

        @isolated
        def test_good(): pass

        @isolated(pids=0)
        def test_b(): pass

        class TestGroup:
            @isolated(cpu="x")
            def test_c(self): pass
        """,
        test_also_bad="""
        from pytest_isolate import isolated

        @isolated(timeout=-1)
        def test_d(): pass
        """,
    )
    result = run(pytester)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert failure_lines(result) == [
        "ERROR test_also_bad.py - Failed: test_also_bad.py::test_d: @isolated(timeout=-1) is invalid: "
        "expected seconds of wall time greater than 0, such as 30 or 2.5",
        'ERROR test_bad.py - Failed: test_bad.py::test_a: @isolated(mem=\'lots\') is invalid: expected a size: bytes as '
        'an int, or a string such as "512K", "64M", "1.5G" or "256MiB"',
        "ERROR test_bad.py - Failed: test_bad.py::test_b: @isolated(pids=0) is invalid: expected a whole number of "
        "processes from 1 up, such as 64",
        "ERROR test_bad.py::TestGroup - Failed: test_bad.py::TestGroup::test_c: @isolated(cpu='x') is invalid: "
        "expected a number of cores from 0.01 up, such as 0.5 or 2",
    ]
    assert "Interrupted: 4 errors during collection" in result.stdout.str()


def test_caps_names_the_bad_capability_and_the_valid_ones(pytester: pytest.Pytester) -> None:
    from pytest_isolate.container.capabilities import CAPABILITIES

    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated(caps=["NOT_A_CAP", "SYS_PTRACE"])
        def test_a(): pass
        """
    )
    (line,) = failure_lines(run(pytester))
    assert line == (
        "ERROR test_caps_names_the_bad_capability_and_the_valid_ones.py - Failed: "
        "test_caps_names_the_bad_capability_and_the_valid_ones.py::test_a: @isolated(caps=['NOT_A_CAP', 'SYS_PTRACE']) "
        'is invalid: expected capability names to add to the default set, such as ["NET_ADMIN"] or '
        f'"SYS_PTRACE,SYS_ADMIN"; NOT_A_CAP is not a capability: the names are {", ".join(sorted(CAPABILITIES))}'
    )
    assert "SYS_PTRACE, SYS_RAWIO" in line


def test_unknown_image_in_a_marker_is_a_collection_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated(rootfs="nonexistent-image")
        def test_a(): pass
        """
    )
    (line,) = failure_lines(run(pytester))
    assert re.fullmatch(
        r"ERROR test_unknown_image_in_a_marker_is_a_collection_error.py - Failed: "
        r"test_unknown_image_in_a_marker_is_a_collection_error.py::test_a: @isolated\(rootfs='nonexistent-image'\) "
        r"is invalid: expected a recipe or an imported image: no image named 'nonexistent-image': no "
        r"nonexistent-image.toml in \S+ and no imported image of that name; known images: debian-bookworm, "
        r"debian-bookworm-tools.*",
        line,
    ), line


def test_without_the_plugin_the_unknown_mark_warning_points_at_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
        from pytest_isolate import isolated

        @isolated
        def test_a(): pass
        """,
        test_attribute="""
        import pytest_isolate

        @pytest_isolate.isolated
        def test_b(): pass
        """,
    )
    result = run(pytester, "-p", "no:isolate", "-W", "always")
    result.assert_outcomes(passed=2, warnings=2)
    warned = [line for line in result.outlines if "PytestUnknownMarkWarning: Unknown pytest.mark.isolated" in line]
    assert [line.split(": PytestUnknownMarkWarning")[0].strip() for line in warned] == [
        f"{pytester.path}/test_attribute.py:3",  # @pytest_isolate.isolated
        f"{pytester.path}/test_plain.py:1",  # from pytest_isolate import isolated
    ]


# -- the command ---------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_isolate.cli", *args], capture_output=True, text=True, check=False)


def test_version_and_images_build_help() -> None:
    from pytest_isolate import __version__

    version = _cli("--version")
    assert (version.returncode, version.stdout) == (0, f"pytest-isolate {__version__}\n")
    help_text = " ".join(_cli("images", "build", "--help").stdout.split())
    assert "Build the layers of an image that the cache lacks, under a lock (a warm cache builds nothing)" in help_text
    assert (
        "name the image: a recipe name (NAME.toml in rootfs-images/ or a --recipes directory), such as debian-bookworm"
        in help_text
    )


# -- --isolate-diff without pytest's bookkeeping --------------------------------


def test_bookkeeping_rules() -> None:
    root = "/tmp/pytest-of-me"
    own = ["/tmp/pytest-of-me", f"{root}/pytest-7", f"{root}/pytest-7/.lock", f"{root}/pytest-current", f"{root}/garbage-1a"]
    assert [path for path in own if not is_bookkeeping(Change(path, "A"), root)] == []
    assert is_bookkeeping(Change(f"{root}/pytest-4/test_x0/f", "D"), root)  # retention of old base dirs
    assert not is_bookkeeping(Change(f"{root}/pytest-7/test_x0", "A"), root)
    assert not is_bookkeeping(Change(f"{root}/pytest-7/test_x0/.lock", "A"), root)
    assert not is_bookkeeping(Change("/etc/x", "A"), root)
    assert is_bookkeeping(Change("/b/popen-gw0", "A"), root, basetemp="/b/popen-gw0")


@NEEDS_CONTAINERS
def test_diff_leaves_out_pytest_bookkeeping(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    temproot = pytester.path / "temproot"
    temproot.mkdir()
    monkeypatch.setenv("PYTEST_DEBUG_TEMPROOT", str(temproot))
    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated
        def test_writes_tmp(tmp_path):
            (tmp_path / "made.txt").write_text("x")
        """
    )
    # Not through runpytest: pytester gives --basetemp, and pytest's bookkeeping
    # is what the default base directory gets.
    result = pytester.run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--isolate-diff", "-rP")
    result.assert_outcomes(passed=1)
    start = next(i for i, line in enumerate(result.outlines) if "pytest-isolate: files changed" in line)
    end = next(i for i in range(start + 1, len(result.outlines)) if result.outlines[i].startswith(("_", "=", "-")))
    listed = result.outlines[start + 1 : end]
    user = __import__("getpass").getuser()
    base = rf"A {re.escape(str(temproot.resolve()))}/pytest-of-{user}/pytest-\d+/test_writes_tmp"
    assert len(listed) in (2, 3), listed  # pytest 9 adds a "test_writes_tmpcurrent" link
    assert re.fullmatch(base + "0", listed[0]) and re.fullmatch(base + "0/made.txt", listed[1]), listed
    assert all(".lock" not in line and "pytest-current" not in line for line in listed), listed


# -- --isolate-keep -------------------------------------------------------------

KEEP_SUITE = """
from pytest_isolate import isolated

@isolated
def test_fails(tmp_path):
    (tmp_path / "evidence.txt").write_text("look here")
    with open("/etc/pytest-isolate-keep-probe", "w") as handle:
        handle.write("kept")
    assert False, str(tmp_path)

@isolated
def test_passes(tmp_path):
    (tmp_path / "passed.txt").write_text("p")
"""


@pytest.fixture
def temproot(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    root = pytester.path / "temproot"
    root.mkdir()
    monkeypatch.setenv("PYTEST_DEBUG_TEMPROOT", str(root))
    monkeypatch.delenv("PYTEST_ISOLATE_KEEP_RUN", raising=False)
    return root.resolve()


def _kept_section(result: pytest.RunResult) -> list[str]:
    start = next(i for i, line in enumerate(result.outlines) if re.fullmatch(r"-+ pytest-isolate: kept -+", line))
    end = next(i for i in range(start + 1, len(result.outlines)) if result.outlines[i].startswith(("_", "=", "-")))
    return result.outlines[start + 1 : end]


@NEEDS_CONTAINERS
@pytest.mark.parametrize("workers", [0, 2])
def test_keep_failed(pytester: pytest.Pytester, temproot, workers: int) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(test_keep=KEEP_SUITE)
    result = run(pytester, "--isolate-keep=failed", *(["-n", str(workers)] if workers else []))
    result.assert_outcomes(failed=1, passed=1)
    user = __import__("getpass").getuser()
    keep_root = temproot / f"pytest-isolate-keep-of-{user}"
    kept = keep_root / "run-1" / "test_keep.py_test_fails"
    section = _kept_section(result)
    assert section[0] == f"the writable layer is kept in {kept}/files (changes.txt lists what was added, changed and deleted)"
    # The tmp_path shown in the failure is on the host now.
    shown = next(line for line in result.outlines if line.startswith("E       AssertionError: ")).split(": ", 1)[1]
    assert (temproot / shown.removeprefix(str(temproot) + "/") / "evidence.txt").read_text() == "look here"
    assert os.path.isfile(os.path.join(shown, "evidence.txt"))
    assert section[1].startswith("copied back to the host: ") and shown.startswith(section[1].split(": ", 1)[1])
    assert (kept / "files" / "etc" / "pytest-isolate-keep-probe").read_text() == "kept"
    assert "A /etc/pytest-isolate-keep-probe" in (kept / "changes.txt").read_text().splitlines()
    assert sorted(os.listdir(keep_root / "run-1")) == ["test_keep.py_test_fails"]  # the passing test's is gone
    assert not os.path.exists("/etc/pytest-isolate-keep-probe")
    summary = (
        f"pytest-isolate kept the writable layers of 1 test(s) in {keep_root}/run-1 (the last 3 runs are kept; "
        "pytest-isolate kept prune removes them)"
    )
    assert any(re.fullmatch(rf"-+ {re.escape(summary)} -+", line) for line in result.outlines)


@NEEDS_CONTAINERS
def test_keep_all_none_and_retention(pytester: pytest.Pytester, temproot) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(test_keep=KEEP_SUITE)
    keep_root = temproot / f"pytest-isolate-keep-of-{__import__('getpass').getuser()}"
    run(pytester).assert_outcomes(failed=1, passed=1)  # the default: none
    assert not keep_root.exists()
    for _ in range(4):
        result = run(pytester, "-o", "isolate_keep=all")
        result.assert_outcomes(failed=1, passed=1)
    assert sorted(os.listdir(keep_root)) == ["run-2", "run-3", "run-4"]  # the newest three runs, as pytest keeps
    assert sorted(os.listdir(keep_root / "run-4")) == ["test_keep.py_test_fails", "test_keep.py_test_passes"]

    env = {**os.environ, "PYTEST_DEBUG_TEMPROOT": str(temproot)}
    listing = subprocess.run([sys.executable, "-m", "pytest_isolate.cli", "kept", "list"], capture_output=True, text=True, env=env, check=True)
    lines = listing.stdout.splitlines()
    assert [line.split()[0] for line in lines if not line.startswith(" ")] == [str(keep_root / f"run-{n}") for n in (2, 3, 4)]
    assert lines[1:3] == ["  test_keep.py_test_fails", "  test_keep.py_test_passes"]
    pruned = subprocess.run([sys.executable, "-m", "pytest_isolate.cli", "kept", "prune", "--keep", "1"], capture_output=True, text=True, env=env, check=True)
    assert pruned.stdout == f"removed 2 kept run(s) from {keep_root}\n"
    assert os.listdir(keep_root) == ["run-4"]
    pruned = subprocess.run([sys.executable, "-m", "pytest_isolate.cli", "kept", "prune"], capture_output=True, text=True, env=env, check=True)
    assert pruned.stdout == f"removed 1 kept run(s) from {keep_root}\n" and os.listdir(keep_root) == []


@NEEDS_CONTAINERS
def test_keep_says_when_nothing_could_be_kept(pytester: pytest.Pytester, temproot) -> None:  # type: ignore[no-untyped-def]
    pytester.makepyfile(
        """
        import os
        from pytest_isolate import isolated

        @isolated
        def test_dies():
            os._exit(3)
        """
    )
    result = run(pytester, "--isolate-keep=failed")
    result.assert_outcomes(failed=1)
    assert _kept_section(result) == ["nothing kept: the container ended before its writable layer could be copied"]


# -- a fixture's server on a dynamic port ---------------------------------------

EXPOSE_SUITE = """
import socket, threading
import pytest
import pytest_isolate
from pytest_isolate import isolated

@pytest.fixture(scope="session")
def echo_server(request):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"echo:" + conn.recv(100))

    threading.Thread(target=serve, daemon=True).start()
    pytest_isolate.expose(request, "127.0.0.1", port)
    yield port
    server.close()

@pytest.fixture
def client(echo_server):
    return echo_server

def ask(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"hi")
        return sock.recv(100)

@isolated
def test_direct(echo_server):
    assert ask(echo_server) == b"echo:hi"

@isolated
def test_through_another_fixture(client):
    assert ask(client) == b"echo:hi"

@isolated(net=["127.0.0.1:1"])
def test_with_its_own_endpoints(echo_server):
    assert ask(echo_server) == b"echo:hi"

@isolated
def test_without_the_fixture_has_no_network():
    with pytest.raises(OSError):
        ask(1)
"""


@NEEDS_CONTAINERS
@pytest.mark.parametrize("workers", [0, 2])
def test_a_session_fixture_exposes_its_server(pytester: pytest.Pytester, workers: int) -> None:
    pytester.makepyfile(test_expose=EXPOSE_SUITE)
    run(pytester, *(["-n", str(workers)] if workers else [])).assert_outcomes(passed=4)


def test_expose_refuses_what_it_cannot_forward(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        import pytest_isolate

        @pytest.fixture(scope="session")
        def remote(request):
            pytest_isolate.expose(request, "192.0.2.1", 5432)

        def test_a(remote):
            pass
        """
    )
    (line,) = failure_lines(run(pytester))
    assert line == (
        "ERROR test_expose_refuses_what_it_cannot_forward.py::test_a - ValueError: pytest_isolate.expose() cannot "
        "forward 192.0.2.1:5432: only a loopback TCP endpoint (127.0.0.0/8, ::1 or localhost) with a port from 1 to "
        "65535 can be forwarded"
    )


@NEEDS_CONTAINERS
def test_the_readme_expose_example_runs(pytester: pytest.Pytester) -> None:
    import pathlib

    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    after = readme.split("**A fixture's server on a dynamic port.**", 1)[1]
    example = after.split("```python\n", 1)[1].split("```", 1)[0]
    pytester.makepyfile(test_readme=example)
    run(pytester).assert_outcomes(passed=1)
    run(pytester, "-n", "2").assert_outcomes(passed=1)
