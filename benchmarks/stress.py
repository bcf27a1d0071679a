"""Stress pytest-isolate with a long suite of tests that pass, fail and break limits.

Generates N tests mixing outcomes in known proportions, runs them with
``python -m pytest -p no:cacheprovider -n W --junitxml=...`` in a
subprocess, and checks

* every test's outcome and failure message (from the junitxml), per kind:

    pass       passes (some allocate, run a subprocess, or leave a setsid daemon)
    fail       fails on an assert
    oom        mem="32M", allocates and touches 256 MiB: killed for the memory limit
    timeout    timeout=1, starts a child and sleeps: killed with its child
    segv       dies of SIGSEGV (ctypes.string_at(0), faulthandler off)
    abort      dies of SIGABRT (os.abort(), faulthandler off)
    forkbomb   pids=16, at most 200 fork attempts: sees EAGAIN, cleans up, passes
    private    net="private": its own veth link, a round trip on its own
               address, and a refusal from the host end

* that the worker processes stay flat: their open fds and RSS (sampled
  from /proc during the run; the first samples after warm-up against the
  last ones), and how many per-test cgroups they hold at once;

* that the host is as it was: no mounts added or removed, no
  ``pytest-isolate-*`` cgroups with dead owners, no ``iso*`` links, no
  process carrying the run's marker string, no worker left alive.

    python benchmarks/stress.py --tests 1000 --workers 2
    python benchmarks/stress.py --tests 120 --workers 2 --keep
    python benchmarks/stress.py --tests 200 --workers 0                # no xdist: the pytest process itself
    python benchmarks/stress.py --tests 60 --inject-leaks              # check the checks: must fail
    python benchmarks/stress.py --pytest-arg=-pno:rerunfailures        # more pytest arguments

Prints a summary and ends with ``stress: OK ...`` (exit code 0) or
``stress: FAILED ...`` (exit code 1) followed by every problem found.
Run it as root on Linux from the environment where pytest-isolate is
installed.  Traffic goes only to loopback and to the tests' own veth
addresses.  Standard library only; Python 3.9+.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import ipaddress
import os
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

# Share of each kind of test, in percent of --tests.
WEIGHTS: Dict[str, int] = {
    "pass": 40,
    "fail": 12,
    "oom": 10,
    "timeout": 4,
    "segv": 5,
    "abort": 5,
    "forkbomb": 10,
    "private": 14,
}
KINDS = list(WEIGHTS)
PER_MODULE = 50

FD_GROWTH_LIMIT = 4  # open fds a worker may gain between warm-up and the end
RSS_GROWTH_LIMIT = 0.30  # fraction of RSS a worker may gain between warm-up and the end
CGROUPS_AT_ONCE_LIMIT = 8  # per-test cgroups a worker may hold at once
WARMUP_TESTS = 0.1  # warm: a test of every kind done, and this share of the worker's tests
WARMUP_FRACTION = 0.2  # of the samples, where no sample is warm by that rule (small runs)
WINDOW_FRACTION = 0.1  # of each worker's samples, at least MIN_WINDOW
MIN_WINDOW = 3

SCRUBBED_ENV = ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_XDIST_AUTO_NUM_WORKERS")

# ---------------------------------------------------------------------------
# The generated suite
# ---------------------------------------------------------------------------

CONFTEST = '''
import os, socket

def inside_container():
    """Refuse to fork-bomb or leave daemons on a host we are not isolated from."""
    with open("/proc/self/mountinfo") as handle:
        root = next(line for line in handle if line.split()[4] == "/")
    on_overlay = root.split(" - ")[1].startswith("overlay ")
    own_pids = os.getpid() < 100 and os.path.exists("/proc/1/comm")
    if not (on_overlay and own_pids and socket.gethostname() != HOST_NAME):
        raise AssertionError("not inside a container: refusing to run a destructive test")


def pytest_runtest_logfinish(nodeid, location):
    """Progress, per pytest process, for the sampler's warm-up (the host's file: not in a container)."""
    fd = os.open(os.path.join(PROGRESS, str(os.getpid())), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (nodeid.rsplit("::", 1)[-1] + "\\n").encode())
    finally:
        os.close(fd)
    if LEAK:
        _leak()


_leaked = []


def _leak():
    """--inject-leaks: what a leaky plugin would do, here in the pytest process itself."""
    import subprocess
    _leaked.append(os.open("/dev/null", os.O_RDONLY))  # an fd per test
    _leaked.append(bytearray(4 << 20) + b"x")  # 4 MiB per test, touched
    if len(_leaked) == 2:  # and one process carrying the marker, once
        _leaked.append(subprocess.Popen(["sh", "-c", "sleep 120; : " + MARKER], start_new_session=True))
'''

MODULE_HEADER = '''
import ctypes, faulthandler, ipaddress, os, signal, socket, subprocess, time
import pytest
from pytest_isolate import isolated
from conftest import inside_container

MARKER = {marker!r}
CLOSED_PORT = {closed_port}


def touch(size):
    block = bytearray(size)
    for offset in range(0, size, 4096):
        block[offset] = 1
    return block


def marked_child(**options):
    return subprocess.Popen(["sh", "-c", "sleep 600; : " + MARKER], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **options)
'''

TEMPLATES = {
    "pass": [
        '''
@isolated
def test_{n:05d}_pass():
    assert sum(range({n})) == {total}
''',
        '''
@isolated(mem="64M", pids=32)
def test_{n:05d}_pass():
    assert len(touch(8 << 20)) == 8 << 20
    assert subprocess.run(["true"]).returncode == 0
''',
        '''
@isolated
def test_{n:05d}_pass():
    inside_container()
    daemon = marked_child(start_new_session=True)  # left behind: the container must kill it
    assert daemon.poll() is None
''',
    ],
    "fail": [
        '''
@isolated
def test_{n:05d}_fail():
    value = {n}
    assert value == -1, "stress-fail-{n}"
''',
    ],
    "oom": [
        '''
@isolated(mem="32M")
def test_{n:05d}_oom():
    touch(256 << 20)
''',
    ],
    "timeout": [
        '''
@isolated(timeout=1)
def test_{n:05d}_timeout():
    child = marked_child()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # bounded: the timeout should strike long before
        time.sleep(0.1)
    pytest.fail("stress: not stopped by timeout=1 (child %d)" % child.pid)
''',
    ],
    "segv": [
        '''
@isolated
def test_{n:05d}_segv():
    faulthandler.disable()
    ctypes.string_at(0)
''',
    ],
    "abort": [
        '''
@isolated
def test_{n:05d}_abort():
    faulthandler.disable()
    os.abort()
''',
    ],
    "forkbomb": [
        '''
@isolated(pids=16)
def test_{n:05d}_forkbomb():
    inside_container()
    children, refused = [], 0
    try:
        for _ in range(200):  # bounded
            try:
                pid = os.fork()
            except BlockingIOError:
                refused += 1
                continue
            if pid == 0:
                try:
                    fd = os.open("/proc/self/comm", os.O_WRONLY)
                    os.write(fd, MARKER.encode())
                    os.close(fd)
                    signal.pause()
                finally:
                    os._exit(0)
            children.append(pid)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        for pid in children:
            os.waitpid(pid, 0)
    assert refused > 0, "pids=16 never refused a fork"
    assert len(children) <= 15, len(children)
''',
    ],
    "private": [
        '''
@isolated(net="private")
def test_{n:05d}_private():
    host = os.environ["ISOLATE_HOST_ADDR"]
    assert sorted(name for _, name in socket.if_nameindex()) == ["eth0", "lo"]
    own = str(ipaddress.ip_address(host) + 1)
    with socket.socket() as server:  # a round trip on the container's own veth address
        server.bind((own, 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5) as client:
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping {n}")
                assert conn.recv(64) == b"ping {n}"
    # Nothing listens on the host end at CLOSED_PORT: a refusal is the host's answer over the link.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, CLOSED_PORT), timeout=5)
''',
    ],
}


def kind_counts(total: int) -> Dict[str, int]:
    """Counts per kind in WEIGHTS' proportions, summing to ``total`` (largest remainder)."""
    weight_sum = sum(WEIGHTS.values())
    exact = {kind: total * weight / weight_sum for kind, weight in WEIGHTS.items()}
    counts = {kind: int(value) for kind, value in exact.items()}
    by_remainder = sorted(KINDS, key=lambda kind: exact[kind] - counts[kind], reverse=True)
    for kind in by_remainder[: total - sum(counts.values())]:
        counts[kind] += 1
    return counts


def write_suite(directory: Path, total: int, seed: int, marker: str, closed_port: int,
                leak: bool = False) -> Dict[str, str]:
    """The suite, kinds shuffled so that every worker meets every kind all along; nodeid name -> kind."""
    counts = kind_counts(total)
    kinds = [kind for kind in KINDS for _ in range(counts[kind])]
    random.Random(seed).shuffle(kinds)
    (directory / "pytest.ini").write_text("[pytest]\n")  # pins the rootdir: no ini above applies
    (directory / "progress").mkdir()
    values = {"HOST_NAME": os.uname().nodename, "PROGRESS": str(directory / "progress"), "LEAK": leak, "MARKER": marker}
    conftest = re.sub(r"\b(HOST_NAME|PROGRESS|LEAK|MARKER)\b", lambda match: repr(values[match.group(1)]), CONFTEST)
    (directory / "conftest.py").write_text(conftest)
    expected: Dict[str, str] = {}
    header = MODULE_HEADER.format(marker=marker, closed_port=closed_port)
    for start in range(0, total, PER_MODULE):
        parts = [header]
        for n in range(start, min(start + PER_MODULE, total)):
            kind = kinds[n]
            variants = TEMPLATES[kind]
            parts.append(variants[n % len(variants)].format(n=n, total=sum(range(n))))
            expected[f"test_{n:05d}_{kind}"] = kind
        (directory / f"test_stress_{start // PER_MODULE:03d}.py").write_text("\n".join(parts))
    return expected


# ---------------------------------------------------------------------------
# What each kind must end as
# ---------------------------------------------------------------------------

def check_outcome(kind: str, name: str, outcome: str, message: str) -> Optional[str]:
    """None if right, else what is wrong."""
    n = int(name.split("_")[1])
    if kind in ("pass", "forkbomb", "private"):
        want, pattern = "passed", None
    elif kind == "fail":
        want, pattern = "failed", rf"AssertionError: stress-fail-{n}\nassert {n} == -1"
    elif kind == "oom":
        want = "failed"
        pattern = r"isolated test was killed for exceeding the memory limit mem='32M' \(peak 3[12]\.\d MiB\)"
    elif kind == "timeout":
        want, pattern = "failed", r"isolated test exceeded timeout=1s; all its processes were killed"
    elif kind == "segv":
        want, pattern = "failed", r"isolated test died of signal SIGSEGV"
    elif kind == "abort":
        want, pattern = "failed", r"isolated test died of signal SIGABRT"
    else:
        raise AssertionError(kind)
    if outcome != want:
        return f"{outcome}, expected {want}" + (f": {message!r}" if message else "")
    if pattern is not None and not re.fullmatch(pattern, message):
        return f"message {message!r} does not match {pattern!r}"
    return None


@dataclasses.dataclass
class Case:
    name: str
    outcome: str
    message: str
    time: float
    properties: Dict[str, str]


def read_junit(path: Path) -> Tuple[List[Case], List[str]]:
    """Test cases of the junitxml, and the problems of the file itself."""
    problems: List[str] = []
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as error:
        return [], [f"junitxml {path} unreadable: {error}"]
    cases = []
    for element in root.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = element.find(tag)
            if child is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = child.get("message", "")
                break
        if len(element.findall("failure")) + len(element.findall("error")) > 1:
            problems.append(f"{element.get('name')}: more than one failure/error element")
        properties = {p.get("name", ""): p.get("value", "") for p in element.iter("property")}
        cases.append(Case(element.get("name", "?"), outcome, message, float(element.get("time") or 0), properties))
    return cases, problems


# ---------------------------------------------------------------------------
# /proc, cgroups, links
# ---------------------------------------------------------------------------

def proc_stat(pid: int) -> Optional[List[str]]:
    """Fields of /proc/PID/stat after the command name (field 3 is index 0)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    return data[data.rfind(")") + 2:].split()


def start_time(pid: int) -> Optional[int]:
    fields = proc_stat(pid)
    return int(fields[19]) if fields else None


def children_of(parent: int) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat(int(entry))
            if fields and int(fields[1]) == parent:
                found.append(int(entry))
    return sorted(found)


def fd_count(pid: int) -> Optional[int]:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def rss_kib(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def processes_with(marker: str) -> List[Tuple[int, str]]:
    found = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        for name in ("cmdline", "comm"):
            try:
                with open(f"/proc/{entry}/{name}", "rb") as handle:
                    data = handle.read()
            except OSError:
                continue
            if needle in data:
                found.append((int(entry), data.replace(b"\0", b" ").decode(errors="replace").strip()))
                break
    return found


def cgroup_mounts() -> List[str]:
    """Mount points of the cgroup hierarchies (v1 and v2)."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            if right.split()[0] in ("cgroup", "cgroup2"):
                points.append(left.split()[4])
    return points


_GROUP_RE = re.compile(r"^pytest-isolate-(\d+)-(\d+)$")


def session_groups(max_depth: int = 8) -> Dict[str, Tuple[int, int]]:
    """Every ``pytest-isolate-<pid>-<start>`` cgroup directory: path -> (pid, start)."""
    found = {}
    for top in cgroup_mounts():
        base = top.rstrip("/").count("/")
        for current, dirs, _ in os.walk(top):
            for name in dirs:
                match = _GROUP_RE.match(name)
                if match:
                    found[os.path.join(current, name)] = (int(match.group(1)), int(match.group(2)))
            if current.count("/") - base >= max_depth:
                dirs[:] = []
    return found


def owner_alive(pid: int, started: int) -> bool:
    return start_time(pid) == started


def find_session_group(pid: int, started: int) -> Optional[str]:
    """The worker's session group: in the memory hierarchy on cgroup v1, the one there is on v2."""
    name = f"pytest-isolate-{pid}-{started}"
    paths = sorted(path for path in session_groups() if os.path.basename(path) == name)
    memory = [path for path in paths if "/memory/" in path]
    return (memory or paths or [None])[0]


def per_test_groups(path: str) -> Optional[int]:
    try:
        return sum(1 for entry in os.scandir(path) if entry.is_dir() and entry.name.startswith("t"))
    except OSError:
        return None


def iso_links() -> List[str]:
    return sorted(name for _, name in socket.if_nameindex() if name.startswith("iso"))


def link_address(name: str) -> Optional[str]:
    """IPv4 address of a link (SIOCGIFADDR), None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            data = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(data[20:24])


def lock_holders() -> Dict[Tuple[str, int], List[int]]:
    """(device "maj:min", inode) -> pids holding a lock on it, from /proc/locks."""
    holders: Dict[Tuple[str, int], List[int]] = {}
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if "->" in fields:
                    fields.remove("->")  # a waiter
                if len(fields) < 6:
                    continue
                try:
                    major, minor, inode = fields[5].split(":")
                    key = (f"{int(major, 16)}:{int(minor, 16)}", int(inode))
                    holders.setdefault(key, []).append(int(fields[4]))
                except ValueError:
                    continue
    except OSError:
        pass
    return holders


def link_owner(name: str) -> Optional[int]:
    """The live pid holding the subnet lock of a host-end link, None if nobody does."""
    address = link_address(name)
    if address is None:
        return None
    network = ipaddress.ip_address(address) - 1  # the host end takes the first address of its /30
    try:
        info = os.stat(f"/run/pytest-isolate/net/{network}")
    except OSError:
        return None
    key = (f"{os.major(info.st_dev)}:{os.minor(info.st_dev)}", info.st_ino)
    for pid in lock_holders().get(key, []):
        if os.path.exists(f"/proc/{pid}"):
            return pid
    return None


def host_mounts() -> List[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return sorted(" ".join(line.split()[3:5]) + " " + line.partition(" - ")[2].strip() for line in handle)


# ---------------------------------------------------------------------------
# Sampling the run
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Sample:
    t: float
    fds: int
    rss_kib: int
    groups: Optional[int]
    done: int  # tests this process has finished
    warm: bool


@dataclasses.dataclass
class Tracked:
    pid: int
    started: int
    role: str
    cmdline: str
    group: Optional[str] = None
    samples: List[Sample] = dataclasses.field(default_factory=list)
    done: List[str] = dataclasses.field(default_factory=list)
    kinds: Set[str] = dataclasses.field(default_factory=set)
    progress_offset: int = 0

    def read_progress(self, directory: Path) -> None:
        """Tests finished so far, from the suite's conftest hook (read on from the last offset)."""
        try:
            with open(directory / str(self.pid), "rb") as handle:
                handle.seek(self.progress_offset)
                data = handle.read()
        except OSError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self.progress_offset += len(complete)
        for line in complete.decode(errors="replace").split():
            self.done.append(line)
            self.kinds.add(line.rsplit("_", 1)[-1])


def exe_of(pid: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def cmdline_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def sample_run(proc: subprocess.Popen, deadline: float, interval: float, workers: int,
               started_at: float, progress: Path, kinds: Set[str], warm_after: int) -> Tuple[Dict[int, Tracked], bool]:
    """Sample the controller and its worker children until pytest exits; (tracked, timed out)."""
    tracked: Dict[int, Tracked] = {}
    controller_start = start_time(proc.pid)
    if controller_start is not None:
        tracked[proc.pid] = Tracked(proc.pid, controller_start, "controller", cmdline_of(proc.pid))
    while proc.poll() is None:
        now = time.monotonic()
        if now > deadline:
            return tracked, True
        for pid in children_of(proc.pid) if workers else []:
            # xdist workers run the controller's interpreter; a child running anything else is not one.
            if pid not in tracked and exe_of(pid) == exe_of(proc.pid) is not None:
                begun = start_time(pid)
                if begun is not None:
                    tracked[pid] = Tracked(pid, begun, "worker", cmdline_of(pid))
        for item in tracked.values():
            if start_time(item.pid) != item.started:
                continue
            if item.group is None and (item.role == "worker" or not workers):
                item.group = find_session_group(item.pid, item.started)
            fds, rss = fd_count(item.pid), rss_kib(item.pid)
            if fds is None or rss is None:
                continue
            groups = per_test_groups(item.group) if item.group else None
            item.read_progress(progress)
            warm = item.kinds >= kinds and len(item.done) >= warm_after
            item.samples.append(Sample(now - started_at, fds, rss, groups, len(item.done), warm))
        # Quick while the workers start, so none is missed; then every `interval`.
        time.sleep(0.05 if now - started_at < 3 else interval)
    return tracked, False


@dataclasses.dataclass
class Flatness:
    pid: int
    role: str
    samples: int
    fds_early: int
    fds_late: int
    fds_max: int
    rss_early: float
    rss_late: float
    groups_max: Optional[int]
    early: Tuple[float, int]  # (seconds into the run, tests done) where the early window starts
    late: Tuple[float, int]  # where the late window starts, and tests done at its end

    @property
    def fd_growth(self) -> int:
        return self.fds_late - self.fds_early

    @property
    def rss_growth(self) -> float:
        return self.rss_late / self.rss_early - 1 if self.rss_early else 0.0


def flatness(item: Tracked) -> Optional[Flatness]:
    """The first samples after warm-up against the last ones.

    Only samples taken while the process holds its session group count:
    from its first isolated test to the end of its session (shutdown closes
    fds and is no steady state).  Warm-up lasts until the process has
    finished a test of every kind (each kind's first run imports modules
    and sets up state once) and WARMUP_TESTS of its tests; in a run too
    small for that, WARMUP_FRACTION of the samples.  Fds and RSS: the
    median of each window (a test in flight holds a few more fds than a
    process between tests; a leak moves the whole window).
    """
    samples = item.samples
    active = [s for s in samples if s.groups is not None]
    if len(active) >= 2 * MIN_WINDOW + 2:
        samples = active
    count = len(samples)
    window = max(MIN_WINDOW, int(count * WINDOW_FRACTION))
    warmup = next((i for i, s in enumerate(samples) if s.warm), None)
    if warmup is None or count - warmup < 2 * window:
        warmup = max(2, int(count * WARMUP_FRACTION))
    if count < warmup + 2 * window:
        return None
    early, late = samples[warmup:warmup + window], samples[-window:]
    groups = [s.groups for s in samples if s.groups is not None]
    return Flatness(
        pid=item.pid, role=item.role, samples=count,
        fds_early=round(statistics.median(s.fds for s in early)),
        fds_late=round(statistics.median(s.fds for s in late)),
        fds_max=max(s.fds for s in samples),
        rss_early=statistics.median(s.rss_kib for s in early) / 1024,
        rss_late=statistics.median(s.rss_kib for s in late) / 1024,
        groups_max=max(groups) if groups else None,
        early=(early[0].t, early[0].done), late=(late[0].t, late[-1].done),
    )


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------

def settle(check, seconds: float = 5.0, step: float = 0.5):
    """Re-run ``check`` until it finds nothing or ``seconds`` pass (transient states settle)."""
    deadline = time.monotonic() + seconds
    found = check()
    while found and time.monotonic() < deadline:
        time.sleep(step)
        found = check()
    return found


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=1000, help="how many tests (default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="xdist workers; 0 runs without xdist (default 2)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the order of kinds (default 1)")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between samples (default 0.25)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds the pytest run may take (default 120 + 1 per test)")
    parser.add_argument("--pytest-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for pytest, such as --pytest-arg=-pno:rerunfailures (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the generated suite, junitxml and output")
    parser.add_argument("--inject-leaks", action="store_true",
                        help="check the checks: the suite's conftest leaks an fd and 4 MiB per test in each pytest "
                        "process and leaves one process with the marker; the run must then fail")
    args = parser.parse_args(argv)
    if args.tests < 1 or args.workers < 0:
        parser.error("--tests must be 1 or more and --workers 0 or more")
    limit = args.timeout if args.timeout is not None else 120 + args.tests

    marker = "isostress" + uuid.uuid4().hex[:6]  # 15 characters: fits /proc/PID/comm
    workdir = Path(tempfile.mkdtemp(prefix="pytest-isolate-stress-"))
    problems: List[str] = []
    notes: List[str] = []
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening, and only on loopback: the veth host end refuses
    try:
        expected = write_suite(workdir, args.tests, args.seed, marker, closed.getsockname()[1], args.inject_leaks)
        junit = workdir / "junit.xml"
        log_path = workdir / "pytest-output.txt"
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE"]
        if args.workers:
            command += ["-n", str(args.workers)]
        command += [*args.pytest_arg, f"--junitxml={junit}", str(workdir)]
        env = {key: value for key, value in os.environ.items() if key not in SCRUBBED_ENV}
        env["COLUMNS"] = "200"

        mounts_before = host_mounts()
        groups_before = set(session_groups())
        links_before = set(iso_links())

        print(f"stress: {args.tests} tests, {args.workers} worker(s), marker {marker}, suite in {workdir}", flush=True)
        print(f"stress: {shlex.join(command)}", flush=True)
        started_at = time.monotonic()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            kinds_run = {kind for kind, count in kind_counts(args.tests).items() if count}
            warm_after = int(args.tests // max(1, args.workers) * WARMUP_TESTS)
            tracked, timed_out = sample_run(proc, started_at + limit, args.interval, args.workers, started_at,
                                            workdir / "progress", kinds_run, warm_after)
            if timed_out:
                problems.append(f"the pytest run took longer than {limit:g}s: killed")
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                returncode = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                returncode = proc.wait(timeout=60)
        elapsed = time.monotonic() - started_at
        output = log_path.read_text(errors="replace")

        # --- outcomes ---
        cases, junit_problems = read_junit(junit)
        problems += junit_problems
        expect_failures = sum(1 for kind in expected.values() if kind not in ("pass", "forkbomb", "private"))
        expected_rc = 1 if expect_failures else 0
        if returncode != expected_rc:
            problems.append(f"pytest exit code {returncode}, expected {expected_rc}")
        for pattern in (r"INTERNALERROR", r"replacing crashed worker", r"worker \S+ crashed",
                        r"Traceback \(most recent"):
            hits = re.findall(rf"^.*{pattern}.*$", output, re.MULTILINE)
            if hits:
                problems.append(f"pytest output has {len(hits)} line(s) matching {pattern!r}, "
                                f"first: {hits[0].strip()!r}")
        seen: Dict[str, Case] = {}
        for case in cases:
            if case.name in seen:
                problems.append(f"{case.name} reported twice in the junitxml")
            seen[case.name] = case
        stats = {kind: {"count": 0, "right": 0, "times": []} for kind in KINDS}
        wrong: List[str] = []
        for name, kind in expected.items():
            row = stats[kind]
            row["count"] += 1
            case = seen.get(name)
            if case is None:
                wrong.append(f"{name}: missing from the junitxml")
                continue
            row["times"].append(case.time)
            why = check_outcome(kind, name, case.outcome, case.message)
            if why is None and "isolate_wall_seconds" not in case.properties:
                why = "no isolate_wall_seconds property: did it run isolated?"
            if why is None:
                row["right"] += 1
            else:
                wrong.append(f"{name}: {why}")
        for name in sorted(set(seen) - set(expected)):
            wrong.append(f"{name}: in the junitxml but not generated")
        problems += wrong

        # --- flatness ---
        workers = [item for item in tracked.values() if item.role == "worker"]
        if args.workers and len(workers) != args.workers:
            problems.append(f"saw {len(workers)} worker process(es), expected {args.workers} "
                            "(a replaced worker, or one missed): " + ", ".join(str(w.pid) for w in workers))
        measured = [flatness(item) for item in (workers if args.workers else tracked.values())]
        controller = tracked.get(proc.pid)
        controller_flat = flatness(controller) if controller and args.workers else None
        for item, flat in zip(workers if args.workers else tracked.values(), measured):
            if flat is None:
                notes.append(f"pid {item.pid}: too few samples ({len(item.samples)}) to judge fds and RSS")
                continue
            if flat.fd_growth > FD_GROWTH_LIMIT:
                problems.append(f"{flat.role} {flat.pid}: open fds grew from {flat.fds_early} to {flat.fds_late} "
                                f"(+{flat.fd_growth}, limit +{FD_GROWTH_LIMIT})")
            if flat.rss_growth > RSS_GROWTH_LIMIT:
                problems.append(f"{flat.role} {flat.pid}: RSS grew from {flat.rss_early:.1f} to "
                                f"{flat.rss_late:.1f} MiB "
                                f"({flat.rss_growth:+.0%}, limit +{RSS_GROWTH_LIMIT:.0%})")
            if flat.groups_max is not None and flat.groups_max > CGROUPS_AT_ONCE_LIMIT:
                problems.append(f"{flat.role} {flat.pid}: held {flat.groups_max} per-test cgroups at once "
                                f"(limit {CGROUPS_AT_ONCE_LIMIT})")

        # --- the host afterwards ---
        ours = {item.pid for item in tracked.values()}
        alive = settle(lambda: [i.pid for i in tracked.values() if owner_alive(i.pid, i.started)])
        if alive:
            problems.append(f"pytest process(es) still alive after the run: {alive}")
        marked = settle(lambda: processes_with(marker))
        if marked:
            problems.append(f"{len(marked)} process(es) with the marker {marker} left: "
                            + "; ".join(f"{pid} {cmd!r}" for pid, cmd in marked[:5]))
            for pid, _ in marked:  # ours (the marker is this run's): end them, by pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

        def mount_changes():
            before, after = set(mounts_before), set(host_mounts())
            added, removed = sorted(after - before), sorted(before - after)
            return (added, removed) if added or removed else None

        added, removed = settle(mount_changes) or ([], [])
        if added:
            problems.append(f"{len(added)} mount(s) added on the host: {added[:5]}")
        if removed:
            problems.append(f"{len(removed)} mount(s) gone from the host: {removed[:5]}")

        def dead_groups():
            return sorted(path for path, (pid, begun) in session_groups().items()
                          if path not in groups_before and not owner_alive(pid, begun)
                          and "isolate-testcase-" not in path)

        leftover_groups = settle(dead_groups)
        own_groups = [path for path in leftover_groups if session_groups().get(path, (0, 0))[0] in ours]
        if own_groups:
            problems.append(f"{len(own_groups)} cgroup(s) of this run's pytest processes left: {own_groups[:5]}")
        others = sorted(set(leftover_groups) - set(own_groups))
        if others:
            problems.append(f"{len(others)} new pytest-isolate cgroup(s) with dead owners that were not this "
                            f"run's processes (another run on this machine?): {others[:5]}")

        links = settle(lambda: iso_links(), seconds=5)
        for name in links:
            owner = link_owner(name)
            if owner is not None and owner not in ours:
                notes.append(f"link {name} belongs to a live process {owner} of another run")
            elif name in links_before:
                problems.append(f"link {name} left over (it was there before this run too; its subnet lock is free)")
            else:
                problems.append(f"link {name} left over by this run")

        # --- summary ---
        print()
        print(f"pytest exit code {returncode}; {len(cases)} test cases in the junitxml; "
              f"{elapsed:.1f} s wall, {elapsed / args.tests * 1000:.0f} ms per test, "
              f"{elapsed * max(1, args.workers) / args.tests * 1000:.0f} ms per test per worker")
        tail = [line for line in output.splitlines() if re.search(r"\b(passed|failed)\b.* in [\d.]+s", line)]
        if tail:
            print(f"pytest: {tail[-1].strip('= ')}")
        print()
        print(f"{'kind':<10} {'tests':>6} {'right':>6} {'mean s':>8} {'max s':>8}  expected outcome")
        descriptions = {
            "pass": "passed", "fail": "failed: AssertionError: stress-fail-N",
            "oom": "failed: killed for exceeding the memory limit mem='32M'",
            "timeout": "failed: exceeded timeout=1s", "segv": "failed: died of signal SIGSEGV",
            "abort": "failed: died of signal SIGABRT", "forkbomb": "passed (EAGAIN seen under pids=16)",
            "private": "passed (net=\"private\")",
        }
        for kind in KINDS:
            row = stats[kind]
            times = row["times"]
            mean = f"{statistics.mean(times):.3f}" if times else "-"
            peak = f"{max(times):.3f}" if times else "-"
            print(f"{kind:<10} {row['count']:>6} {row['right']:>6} {mean:>8} {peak:>8}  {descriptions[kind]}")
        total_right = sum(row["right"] for row in stats.values())
        print(f"{'all':<10} {args.tests:>6} {total_right:>6}")
        print()
        print(f"open fds and RSS, sampled every {args.interval:g} s; early window: the first samples after warm-up "
              f"(a test of every kind done, and {WARMUP_TESTS:.0%} of the process's tests), late window: the last "
              f"samples before the session ends; {WINDOW_FRACTION:.0%} of the samples each, medians:")
        for item, flat in list(zip(workers if args.workers else tracked.values(), measured)) + (
                [(controller, controller_flat)] if controller_flat else []):
            if flat is None:
                print(f"  {item.role} {item.pid}: {len(item.samples)} samples, too few to judge")
                continue
            groups = f"; per-test cgroups at once: max {flat.groups_max}" if flat.groups_max is not None else ""
            print(f"  {flat.role} {flat.pid} ({len(item.done)} tests): fds {flat.fds_early} -> {flat.fds_late} "
                  f"({flat.fd_growth:+d}, max {flat.fds_max}); RSS {flat.rss_early:.1f} -> {flat.rss_late:.1f} MiB "
                  f"({flat.rss_growth:+.1%}); windows from t={flat.early[0]:.0f}s ({flat.early[1]} tests done) "
                  f"and t={flat.late[0]:.0f}s (to {flat.late[1]} done){groups}")
            picks = sorted({round(i * (len(item.samples) - 1) / 7) for i in range(8)})
            shown = [item.samples[i] for i in picks]
            print("    " + "  ".join(f"[t={sample.t:.0f}s {sample.done} done: {sample.fds} fds "
                                     f"{sample.rss_kib / 1024:.1f}M]" for sample in shown))
        print()
        print(f"host after the run: mounts +{len(added)}/-{len(removed)}, leftover cgroups {len(leftover_groups)}, "
              f"iso links {len(links)}, marker processes {len(marked)}, pytest processes alive {len(alive)}")
        for note in notes:
            print(f"note: {note}")
        if problems:
            print()
            print(f"stress: FAILED: {len(problems)} problem(s) in {args.tests} tests")
            for problem in problems[:50]:
                print(f"  - {problem}")
            if len(problems) > 50:
                print(f"  ... and {len(problems) - 50} more")
            print(f"--- last lines of the pytest output ({log_path}) ---")
            print("\n".join(line[:300] for line in output.splitlines()[-40:]))
            return 1
        print(f"stress: OK: {args.tests} tests, every outcome right, workers flat, host clean")
        return 0
    finally:
        closed.close()
        if args.keep or (problems and not args.inject_leaks):
            print(f"stress: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
