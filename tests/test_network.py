"""Network modes: loopback only, host, a private veth link, forwarded host services.

Traffic goes only to loopback or to the addresses of the veth links the
plugin made for the test itself.
"""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys
import threading

import pytest
from conftest import CONTAINER
from helpers import failure_lines, run

pytestmark = pytest.mark.requires(*CONTAINER)


class EchoServer:
    """A TCP server on the host: echoes, or closes at once when asked to."""

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((address, 0))
        self.listener.listen(128)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    @staticmethod
    def _handle(conn: socket.socket) -> None:
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            if data == b"close\n":
                return  # a server that closes early
            conn.sendall(b"echo:" + data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.listener.close()


@pytest.fixture
def echo_server():
    server = EchoServer()
    yield server
    server.close()


def _links_of(network_range: str) -> list[str]:
    """The host ends of veth links the plugin made in ``network_range`` that still exist.

    Each test gives its run a range of its own: other tests (xdist workers of
    this suite) may hold links in theirs at the same time.
    """
    import ipaddress

    from pytest_isolate.container.hostlink import link_name

    names = {link_name(subnet, "h") for subnet in ipaddress.IPv4Network(network_range).subnets(new_prefix=30)}
    return [name for _, name in socket.if_nameindex() if name in names]


def test_forwarded_host_service(pytester: pytest.Pytester, echo_server: EchoServer) -> None:
    other = EchoServer()  # on the host too, but not forwarded
    try:
        pytester.makepyfile(
            f"""
            import socket
            import pytest
            from pytest_isolate import isolated

            def ask(message, port={echo_server.port}, host="127.0.0.1"):
                with socket.create_connection((host, port), timeout=5) as conn:
                    conn.sendall(message)
                    conn.shutdown(socket.SHUT_WR)
                    reply = b""
                    while chunk := conn.recv(65536):
                        reply += chunk
                    return reply

            @isolated(net=["127.0.0.1:{echo_server.port}"])
            def test_bytes_both_ways():
                big = b"x" * 300_000 + b"\\n"
                assert ask(big) == b"echo:" + big

            @isolated(net=["127.0.0.1:{echo_server.port}"])
            def test_many_connections():  # localhost inside: the container's own /etc/hosts names it
                for n in range(50):
                    assert ask(f"{{n}}\\n".encode(), host="localhost") == f"echo:{{n}}\\n".encode()

            @isolated(net=["127.0.0.1:{echo_server.port}"])
            def test_server_that_closes_early():
                assert ask(b"close\\n") == b""

            @isolated(net=["127.0.0.1:{echo_server.port}"])
            def test_nothing_else_is_reachable():
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection(("127.0.0.1", {other.port}), timeout=2)
                assert [name for _, name in socket.if_nameindex()] == ["lo"]
            """
        )
        result = run(pytester)
        result.assert_outcomes(passed=4)
        assert echo_server.accepted == 1 + 50 + 1
        assert other.accepted == 0
    finally:
        other.close()


def _nsswitch_files_only() -> str:
    """The host's nsswitch.conf with host names looked up in /etc/hosts alone: no DNS query leaves the machine."""
    path = pathlib.Path("/etc/nsswitch.conf")
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = [line for line in text.splitlines() if not line.startswith("hosts:")]
    return "\n".join([*lines, "hosts: files", ""])


# /etc/hosts as the pytest run sees it -> (the reason, the fix) the test fails with; None: the test reaches the service.
NAMED_ENDPOINT_CASES = {
    "listed": ("127.0.0.1\tlocalhost\n", None),
    "missing": (
        "127.0.0.1\tsomething-else\n",
        (
            "the host name 'localhost' does not resolve on this host (Name or service not known)",
            'add the line "127.0.0.1 localhost" to /etc/hosts (minimal Debian images have none)',
        ),
    ),
    "elsewhere": (  # TEST-NET-1 (RFC 5737): never contacted, the test is refused before its container starts
        "192.0.2.1\tlocalhost\n",
        (
            "the host name 'localhost' resolves to 192.0.2.1 on this host, not to a loopback address, "
            "and only loopback endpoints are forwarded",
            "map localhost to 127.0.0.1 in /etc/hosts",
        ),
    ),
}


@pytest.mark.requires("root")
@pytest.mark.parametrize("case", NAMED_ENDPOINT_CASES)
def test_a_forwarded_name_resolves_on_the_host_or_fails_naming_it(
    pytester: pytest.Pytester, echo_server: EchoServer, case: str
) -> None:
    """net=["localhost:PORT"] on a host whose /etc/hosts has no localhost line (Debian's minbase) fails the test
    naming the endpoint, before the container starts.

    The pytest run gets a stand-in /etc/hosts (and nsswitch.conf) bound over the host's in a mount namespace of
    its own: the machine's files are never edited.
    """
    hosts, expected = NAMED_ENDPOINT_CASES[case]
    (pytester.path / "hosts").write_text(hosts)
    (pytester.path / "nsswitch.conf").write_text(_nsswitch_files_only())
    pytester.makepyfile(
        test_named=f"""
        import socket
        from pytest_isolate import isolated

        @isolated(net=["localhost:{echo_server.port}"])
        def test_reaches_the_service():
            with socket.create_connection(("127.0.0.1", {echo_server.port}), timeout=5) as conn:
                conn.sendall(b"hi\\n")
                assert conn.recv(100) == b"echo:hi\\n"
        """
    )
    script = 'mount --bind hosts /etc/hosts && mount --bind nsswitch.conf /etc/nsswitch.conf && exec "$@"'
    result = pytester.run(
        "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-ra", f"--basetemp={pytester.path / 'tmp'}", "test_named.py",
    )  # fmt: skip
    if expected is None:
        result.assert_outcomes(passed=1)
        assert echo_server.accepted == 1
        return
    reason, fix = expected
    result.assert_outcomes(errors=1)
    assert failure_lines(result) == [
        f"ERROR test_named.py::test_reaches_the_service - pytest-isolate could not forward localhost:{echo_server.port} "
        f"into the container: {reason}"
    ]
    assert f'{fix}, or name the address: net=["127.0.0.1:{echo_server.port}"]' in result.outlines, result.outlines
    assert echo_server.accepted == 0


def test_private_link(pytester: pytest.Pytester) -> None:
    server = EchoServer(address="0.0.0.0")  # reached on the host end of each test's own veth
    try:
        pytester.makepyfile(
            f"""
            import os, socket
            from pytest_isolate import isolated

            @isolated(net="private")
            def test_reaches_the_host_end():
                host = os.environ["ISOLATE_HOST_ADDR"]
                assert host.startswith("10.213.200.")
                with socket.create_connection((host, {server.port}), timeout=5) as conn:
                    conn.sendall(b"hi\\n")
                    assert conn.recv(100) == b"echo:hi\\n"
                assert sorted(name for _, name in socket.if_nameindex()) == ["eth0", "lo"]
                routes = open("/proc/net/route").read().splitlines()[1:]
                assert any(line.split()[1] == "00000000" for line in routes)  # a default route
            """
        )
        run(pytester, "-o", "isolate_net_range=10.213.200.0/24").assert_outcomes(passed=1)
        assert server.accepted == 1
    finally:
        server.close()
    assert _links_of("10.213.200.0/24") == []


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_hundred_private_tests_leave_no_links(pytester: pytest.Pytester, workers: list[str], host_state) -> None:
    pytester.makepyfile(
        """
        import os, pytest
        from pytest_isolate import isolated

        @isolated(net="private")
        @pytest.mark.parametrize("n", range(100))
        def test_link(n):
            assert os.environ["ISOLATE_HOST_ADDR"]
        """
    )
    network_range = "10.213.201.0/24" if workers else "10.213.202.0/24"
    result = run(pytester, *workers, "-o", f"isolate_net_range={network_range}")
    result.assert_outcomes(passed=100)
    assert _links_of(network_range) == []


def test_host_network_with_net_true(pytester: pytest.Pytester) -> None:
    # veth links of other tests come and go meanwhile: compare the rest.
    host_links = sorted(name for _, name in socket.if_nameindex() if not name.startswith("iso"))
    pytester.makepyfile(
        f"""
        import socket
        from pytest_isolate import isolated

        @isolated(net=True)
        def test_sees_host_links():
            assert sorted(n for _, n in socket.if_nameindex() if not n.startswith("iso")) == {host_links!r}
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_names_without_network(pytester: pytest.Pytester, echo_server: EchoServer) -> None:
    pytester.makepyfile(
        f"""
        import socket, time
        import pytest
        from pytest_isolate import isolated

        @isolated
        def test_localhost_resolves_and_dns_fails_fast():
            assert socket.getaddrinfo("localhost", 80, socket.AF_INET)[0][4] == ("127.0.0.1", 80)
            started = time.monotonic()
            with pytest.raises(socket.gaierror):
                socket.getaddrinfo("pytest-isolate.invalid", 80)
            assert time.monotonic() - started < 3

        @isolated
        def test_fails_on_connection():
            socket.create_connection(("127.0.0.1", {echo_server.port}), timeout=2)
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- pytest-isolate -*",
            "this test ran without network (net=False: only its own loopback); allow a host service with "
            'net=["host:port"], or the host\'s network with net=True',
        ]
    )


def test_rate_limit_on_loopback(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import socket, threading, time
        from pytest_isolate import isolated

        @isolated(net_rate="1mbit")
        def test_slow_loopback():
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            sender = socket.create_connection(listener.getsockname())
            receiver, _ = listener.accept()
            payload = b"x" * 400_000  # 3.2 Mbit
            thread = threading.Thread(target=sender.sendall, args=(payload,))
            started = time.monotonic()
            thread.start()
            received = 0
            while received < len(payload):
                received += len(receiver.recv(65536))
            took = time.monotonic() - started
            thread.join()
            print(f"took {took:.2f} s")
            assert 1.8 < took < 6, took  # ~3.2 s at 1 Mbit/s, less the first burst
        """
    )
    run(pytester).assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('net="wifi"', "@isolated(net='wifi') is invalid: expected False (own loopback only), True or \"host\" "
         "(the host's network), \"private\" (a veth link to the host), or a list of host TCP endpoints such as "
         '["127.0.0.1:5432", "localhost:6379"]'),
        ('net=["127.0.0.1:99999"]', "the port of '127.0.0.1:99999' must be 1 to 65535"),
        ('net=["db.example:5432"]', "'db.example:5432' is not on loopback (127.0.0.0/8, ::1 or localhost)"),
        ('net=True, net_rate="1mbit"', "@isolated(net_rate='1mbit') is invalid: expected no net_rate with net=True: "
         "the host's interfaces are never touched; use net=False, \"private\" or a list of endpoints"),
        ('net_rate="fast"', "@isolated(net_rate='fast') is invalid: expected a bandwidth such as \"1mbit\", "
         '"500kbit" or "1gbit"'),
    ],
)
def test_bad_network_values(pytester: pytest.Pytester, marker: str, message: str) -> None:
    pytester.makepyfile(
        test_bad=f"""
        from pytest_isolate import isolated

        @isolated({marker})
        def test_it():
            pass
        """
    )
    (line,) = failure_lines(run(pytester))
    assert line.startswith("ERROR test_bad.py - Failed: test_bad.py::test_it: @isolated(")
    assert line.endswith(message), line


def test_no_network_tool_is_run() -> None:
    # The network side is netlink (pyroute2) and ioctls: no `ip` commands.
    package = __import__("pytest_isolate").__path__[0]
    modules = [f"{package}/container/{name}.py" for name in ("network", "hostlink", "netsetup", "forwarder")]
    source = subprocess.run(["grep", "-n", "subprocess", *modules], capture_output=True, text=True)
    assert source.stdout == ""
