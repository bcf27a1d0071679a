"""What a test sees in its container: real overlay, namespaces, loopback."""

from __future__ import annotations

import os
import socket
import threading
import uuid

import pytest
from conftest import CONTAINER
from helpers import failure_lines, guard_conftest, run

pytestmark = pytest.mark.requires(*CONTAINER)


def test_writes_and_deletes_are_discarded(pytester: pytest.Pytester, host_state) -> None:
    probe = f"/etc/pytest-isolate-probe-{uuid.uuid4().hex}"
    host_tmp_file = f"/tmp/pytest-isolate-host-file-{uuid.uuid4().hex}"
    with open(host_tmp_file, "w") as handle:
        handle.write("from the host")
    project_file = pytester.path / "data.txt"
    project_file.write_text("original")
    pytester.makeconftest(guard_conftest())
    pytester.makepyfile(
        f"""
        import os
        from conftest import inside_container
        from pytest_isolate import isolated

        @isolated
        def test_a_writes_everywhere():
            inside_container()
            with open({probe!r}, "w") as f:
                f.write("x")
            with open("data.txt", "w") as f:
                f.write("changed")
            os.remove("/etc/hostname")
            with open({host_tmp_file!r}) as f:
                assert f.read() == "from the host"
            os.remove({host_tmp_file!r})

        @isolated
        def test_b_sees_nothing_of_a():
            assert not os.path.exists({probe!r})
            assert open("data.txt").read() == "original"
            assert os.path.exists("/etc/hostname")
            assert os.path.exists({host_tmp_file!r})
        """
    )
    try:
        result = run(pytester)
        result.assert_outcomes(passed=2)
        assert not os.path.exists(probe)
        assert project_file.read_text() == "original"
        assert os.path.exists(host_tmp_file)
    finally:
        for path in (probe, host_tmp_file):
            if os.path.exists(path):
                os.remove(path)


def test_pid_uts_ipc_namespaces(pytester: pytest.Pytester) -> None:
    host_name = socket.gethostname()
    pytester.makepyfile(
        f"""
        import os, socket
        from pytest_isolate import isolated

        @isolated
        def test_sees_only_its_own_processes():
            pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
            assert pids == [1, 2]
            assert os.getpid() == 2

        @isolated(hostname="box")
        def test_hostname_is_fixed_without_sys_admin():
            assert socket.gethostname() == "box"
            try:
                socket.sethostname("changed-inside")
            except PermissionError:
                pass
            else:
                raise AssertionError("sethostname worked without CAP_SYS_ADMIN")

        @isolated(hostname="box", caps=["SYS_ADMIN"])
        def test_hostname_is_private():
            assert socket.gethostname() == "box"
            socket.sethostname("changed-inside")
            assert socket.gethostname() == "changed-inside"

        @isolated
        def test_default_hostname():
            assert socket.gethostname() == "isolated" != {host_name!r}
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=4)
    assert socket.gethostname() == host_name


def test_loopback_only_network(pytester: pytest.Pytester) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    pytester.makepyfile(
        f"""
        import socket
        import pytest
        from pytest_isolate import isolated

        @isolated
        def test_host_server_unreachable():
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", {port}), timeout=2)

        @isolated
        def test_own_loopback_works():
            server = socket.socket()
            server.bind(("127.0.0.1", 0))
            server.listen()
            client = socket.create_connection(server.getsockname(), timeout=2)
            conn, _ = server.accept()
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"

        @isolated
        def test_only_loopback_interface():
            assert [name for _, name in socket.if_nameindex()] == ["lo"]

        @isolated(net=True)
        def test_host_network_with_net_true():
            socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
        """
    )
    try:
        result = run(pytester)
    finally:
        stop.set()
        thread.join()
        server.close()
    result.assert_outcomes(passed=4)
    assert len(accepted) == 1  # only the net=True test reached the host
    for conn in accepted:
        conn.close()


def test_proc_dev_sys_tmp_path(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os, subprocess
        from pytest_isolate import isolated

        @isolated
        def test_dev_is_minimal(tmp_path):
            assert sorted(os.listdir("/dev")) == sorted(
                ["null", "zero", "full", "random", "urandom", "tty", "pts", "shm",
                 "fd", "stdin", "stdout", "stderr", "ptmx"])
            subprocess.run(["true"], stdout=subprocess.DEVNULL, check=True)
            with open("/dev/null", "w") as f:
                f.write("discarded")
            assert os.path.getsize("/dev/null") == 0
            (tmp_path / "x").write_text("works")
            assert (tmp_path / "x").read_text() == "works"

        @isolated
        def test_sys_is_read_only():
            try:
                open("/sys/kernel/mm/transparent_hugepage/enabled", "w")
            except OSError as error:
                assert error.errno == 30  # EROFS
            else:
                raise AssertionError("/sys is writable")
        """
    )
    run(pytester).assert_outcomes(passed=2)


def test_disk_limit_gives_enospc(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import errno, os
        from pytest_isolate import isolated

        @isolated(disk="8M")
        def test_fill():
            chunk = b"x" * (1 << 20)
            fd = os.open("/var/tmp/fill", os.O_WRONLY | os.O_CREAT)
            try:
                for _ in range(64):  # bounded: 64 MiB at most
                    try:
                        os.write(fd, chunk)
                    except OSError as error:
                        assert error.errno == errno.ENOSPC
                        return
            finally:
                os.close(fd)
            raise AssertionError("wrote 64 MiB into an 8 MiB layer")
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_unmarked_tests_are_not_isolated(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os
        def test_plain():
            assert os.getpid() != 2
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_isolate_option_isolates_every_test(pytester: pytest.Pytester, host_state) -> None:
    pytester.makepyfile(
        """
        import os
        def test_one():
            assert os.getpid() == 2
        class TestTwo:
            def test_two(self):
                assert os.getpid() == 2
        """
    )
    result = run(pytester, "--isolate")
    result.assert_outcomes(passed=2)
    assert failure_lines(result) == []


def test_user_namespace_as_root() -> None:
    """user=True: root inside is nobody outside, so root-only host files stay closed."""
    import shutil
    import subprocess
    import sys

    from helpers import ARGS

    # pytest's temporary tree is root's only; nobody must be able to enter the project.
    project = f"/tmp/pytest-isolate-user-{os.getpid()}"
    os.makedirs(project, mode=0o755)
    try:
        with open(os.path.join(project, "test_user.py"), "w") as handle:
            handle.write(
                "import os\n"
                "import pytest\n"
                "from pytest_isolate import isolated\n\n"
                "@isolated(user=True)\n"
                "def test_nobody_outside():\n"
                "    assert os.getuid() == 0 and os.getpid() == 2\n"
                "    assert open('/proc/self/uid_map').read().split() == ['0', '65534', '1']\n"
                "    with pytest.raises(PermissionError):\n"
                "        open('/etc/shadow')\n\n"
                "@isolated\n"
                "def test_root_without_it():\n"
                "    open('/etc/shadow').close()\n"
            )
        result = subprocess.run([sys.executable, "-m", "pytest", *ARGS], cwd=project, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout
        assert "2 passed" in result.stdout.splitlines()[-1]
    finally:
        shutil.rmtree(project)


def test_pytests_open_files_lead_nowhere_and_keep_their_numbers(pytester: pytest.Pytester, tmp_path) -> None:
    # A file pytest holds through a Python object (the default --log-file
    # handler's /dev/null, a conftest's log): in the container its number
    # leads to /dev/null.  Closed, the number would go to the next file the
    # test opens, and pytest's object would write into that file (found in
    # pytest's own suite under pytest-xdist: log records in a test's capture).
    held = tmp_path / "held-by-pytest.log"
    pytester.makeconftest(
        f"""
        import pytest
        HELD = open({str(held)!r}, "w")

        @pytest.fixture
        def held():
            return HELD
        """
    )
    pytester.makepyfile(
        """
        import os

        def test_held(held):
            assert os.getpid() == 2
            fd = held.fileno()
            assert os.readlink(f"/proc/self/fd/{fd}") == "/dev/null"
            opened = [os.open(f"/tmp/mine-{n}", os.O_CREAT | os.O_WRONLY) for n in range(16)]
            assert fd not in opened
            held.write("through pytest's object\\n")
            held.flush()
            assert [os.fstat(mine).st_size for mine in opened] == [0] * 16
        """
    )
    run(pytester, "--isolate").assert_outcomes(passed=1)
    assert held.read_text() == ""


def test_descriptors_opened_after_pytest_listed_them_are_closed_in_the_test_process(tmp_path) -> None:
    # pytest lists its descriptors just before the fork (libc.open_descriptors),
    # and the child blanks what was listed and closes every other number:
    # what another of pytest's threads opened in between, in a gap of the
    # listing or above it, is closed, never left open in the container.
    import fcntl
    import json

    from pytest_isolate.container import libc

    report_read, report_write = os.pipe()
    pipe = f"pipe:[{os.fstat(report_write).st_ino}]"
    blank = os.open(os.devnull, os.O_RDWR)
    first, second, third = (os.open(tmp_path / f"held-{n}", os.O_WRONLY | os.O_CREAT) for n in range(3))
    os.close(second)
    listed = libc.open_descriptors()
    assert listed is not None and second not in listed and {first, third, report_write} <= set(listed)
    for fd in listed:
        fcntl.fcntl(fd, fcntl.F_GETFD)  # each one open: not the listing's own descriptor
    late_in_gap = os.open(tmp_path / "late", os.O_WRONLY | os.O_CREAT)
    late_above = os.dup2(third, max(listed) + 50)
    assert late_in_gap == second
    numbers = (first, third, late_in_gap, late_above, report_write)
    pid = os.fork()
    if pid == 0:
        try:
            libc.blank_all_except((report_write,), blank, listed=listed)
            seen = {}
            for fd in numbers:
                try:
                    seen[fd] = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    seen[fd] = "closed"
            os.write(report_write, json.dumps(seen).encode())
        finally:
            os._exit(0)
    os.close(report_write)
    seen = json.loads(os.read(report_read, 65536))
    os.waitpid(pid, 0)
    for fd in (report_read, blank, first, third, late_in_gap, late_above):
        os.close(fd)
    assert seen == {
        str(first): "/dev/null",
        str(third): "/dev/null",
        str(late_in_gap): "closed",
        str(late_above): "closed",
        str(report_write): pipe,
    }


CHURNING_CONFTEST = """
import os
import threading
import time

STOP = threading.Event()

def churn():
    # Another thread of pytest's, opening and closing a host file as fast as
    # it can, for at most 60 s: some opens land between pytest's listing of
    # its descriptors and the fork.
    deadline = time.monotonic() + 60
    while not STOP.is_set() and time.monotonic() < deadline:
        os.close(os.open(__file__, os.O_RDONLY))

def pytest_sessionstart(session):
    threading.Thread(target=churn, daemon=True).start()

def pytest_sessionfinish(session):
    STOP.set()
"""


def test_a_descriptor_another_thread_of_pytest_opens_never_reaches_a_container(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CHURNING_CONFTEST)
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.parametrize("n", range(40))
        def test_no_host_file_open(n):
            assert os.getpid() == 2
            conftest = os.path.join(os.path.dirname(__file__), "conftest.py")
            held = []
            for name in os.listdir("/proc/self/fd"):
                try:
                    held.append(os.readlink(f"/proc/self/fd/{name}"))
                except OSError:
                    pass  # the listing's own descriptor, closed by now
            assert conftest not in held
        """
    )
    run(pytester, "--isolate").assert_outcomes(passed=40)
