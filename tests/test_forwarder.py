"""The forwarder of net=["127.0.0.1:PORT"] never blocks pytest, and timeout= ends a stalled test.

The host services here are on loopback only.  A "stalled" service listens
and never accepts: the kernel completes the connections and buffers what
arrives until its buffers are full, then the sender waits forever, as it
would for a service that accepted and never read.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from conftest import CONTAINER
from helpers import failure_lines, run

from pytest_isolate.container.forwarder import STOP_SECONDS, Forwarder


def _stalled_service() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    return server


def _listener() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener


def _flood(port: int, stop: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(0.2)
        chunk = b"x" * 65536
        while not stop.is_set():
            try:
                sock.send(chunk)
            except (TimeoutError, OSError):
                continue


def test_stop_returns_while_the_service_is_stalled() -> None:
    """In-process: the forwarder thread copies into a service that never reads, and stop() still returns."""
    service, listener = _stalled_service(), _listener()
    forwarder = Forwarder([listener], (service.getsockname(),))
    forwarder.start()
    stop = threading.Event()
    client = threading.Thread(target=_flood, args=(listener.getsockname()[1], stop))
    client.start()
    try:
        time.sleep(1.0)  # long enough to fill every buffer on the way
        started = time.monotonic()
        forwarder.stop()
        stopped_in = time.monotonic() - started
    finally:
        stop.set()
        client.join()
        service.close()
    assert stopped_in < STOP_SECONDS / 4, f"stop() took {stopped_in:.2f}s"


def test_bytes_and_half_close_both_ways() -> None:
    """In-process: 3 MB through the non-blocking copy, end-of-file passed on, the reply comes back."""
    server = _listener()
    received = bytearray()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(65536):
                received.extend(chunk)
            conn.sendall(b"got %d" % len(received))

    thread = threading.Thread(target=serve)
    thread.start()
    listener = _listener()
    forwarder = Forwarder([listener], (server.getsockname(),))
    forwarder.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as conn:
            conn.sendall(b"y" * 3_000_000)
            conn.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
    finally:
        thread.join(10)
        forwarder.stop()
        server.close()
    assert reply == b"got 3000000"
    assert bytes(received) == b"y" * 3_000_000


def test_refused_service_closes_the_connection() -> None:
    """In-process: nothing listens on the host port: the client sees end-of-file, as after a refusal."""
    gone = _listener()
    address = gone.getsockname()
    gone.close()
    listener = _listener()
    forwarder = Forwarder([listener], (address,))
    forwarder.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as conn:
            conn.settimeout(5)
            try:
                data = conn.recv(10)
            except ConnectionResetError:
                data = b""
    finally:
        forwarder.stop()
    assert data == b""


STALLED_SUITE = """
import socket
from pytest_isolate import isolated

@isolated(net=["127.0.0.1:{port}"], timeout=2)
def test_writes_to_a_stalled_service():
    sock = socket.create_connection(("127.0.0.1", {port}), timeout=30)
    sock.settimeout(None)
    while True:
        sock.sendall(b"x" * 65536)

@isolated(net=["127.0.0.1:{port}"], timeout=2)
def test_in_setup(stalled_in_setup):
    pass

@isolated(net=["127.0.0.1:{port}"])
def test_next_one_runs():
    with socket.create_connection(("127.0.0.1", {port}), timeout=5):
        pass
"""

STALLED_CONFTEST = """
import socket
import pytest

@pytest.fixture
def stalled_in_setup():
    sock = socket.create_connection(("127.0.0.1", {port}), timeout=30)
    sock.settimeout(None)
    while True:
        sock.sendall(b"x" * 65536)
"""


@pytest.mark.requires(*CONTAINER)
@pytest.mark.parametrize("args", [(), ("-n", "2")], ids=["serial", "xdist"])
@pytest.mark.parametrize("faulthandler", [False, True], ids=["plain", "faulthandler_timeout"])
def test_timeout_ends_a_test_stalled_on_a_forwarded_service(
    pytester: pytest.Pytester, args: tuple[str, ...], faulthandler: bool
) -> None:
    """The timeout failure, on time, in the phase that stalled; the next test is unaffected.

    With pytest's faulthandler_timeout, a forked test used to hang at setup for good (the
    parent's armed watchdog), which timeout= turned into an "ERROR at setup".
    """
    if args:
        pytest.importorskip("xdist")
    service = _stalled_service()
    port = service.getsockname()[1]
    try:
        pytester.makepyfile(test_stalled=STALLED_SUITE.format(port=port))
        pytester.makeconftest(STALLED_CONFTEST.format(port=port))
        extra = ("-o", "faulthandler_timeout=60") if faulthandler else ()
        started = time.monotonic()
        result = run(pytester, *args, *extra)
        elapsed = time.monotonic() - started
    finally:
        service.close()
    result.assert_outcomes(passed=1, failed=1, errors=1)
    assert sorted(failure_lines(result)) == [
        "ERROR test_stalled.py::test_in_setup - isolated test exceeded timeout=2s; all its processes were killed",
        "FAILED test_stalled.py::test_writes_to_a_stalled_service - isolated test exceeded timeout=2s; "
        "all its processes were killed",
    ]
    # Two 2 s timeouts, plus pytest's own start (and the workers'), never the 40-60 s of a hang.
    assert elapsed < 20, f"the run took {elapsed:.1f}s"
