"""Rootless containers: pytest run by an ordinary user, in a user namespace.

CI runs this file a second time as an unprivileged user (see .ci/run); as
root these tests skip, since the root suite covers the rest.
"""

from __future__ import annotations

import os
import platform
import re
import sys

import capabilities
import pytest
from helpers import failure_lines, run

pytestmark = pytest.mark.requires("rootless", "overlay", "netns")


def test_contained_like_root(pytester: pytest.Pytester) -> None:
    mine = pytester.path / "mine.txt"
    mine.write_text("original")
    pytester.makepyfile(
        f"""
        import os, socket
        from pytest_isolate import isolated

        @isolated
        def test_a_changes_things(tmp_path):
            assert os.getpid() == 2
            # Besides init and the test, only the container's own fuse-overlayfs daemons (issue 11).
            others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) > 2]
            assert {{open(f"/proc/{{p}}/comm").read().strip() for p in others}} <= {{"fuse-overlayfs"}}
            assert socket.gethostname() == "isolated"
            assert [name for _, name in socket.if_nameindex()] == ["lo"]
            with open({str(mine)!r}, "w") as handle:
                handle.write("changed")
            os.remove({str(mine)!r}.replace("mine", "also"))
            (tmp_path / "x").write_text("works")

        @isolated
        def test_b_sees_nothing_of_a():
            assert open({str(mine)!r}).read() == "original"
        """
    )
    (pytester.path / "also.txt").write_text("here")
    run(pytester).assert_outcomes(passed=2)
    assert mine.read_text() == "original"
    assert (pytester.path / "also.txt").exists()


def test_limits_need_delegation_or_the_rlimit_fallback(pytester: pytest.Pytester) -> None:
    """A delegated cgroup enforces mem= (over the rlimit fallback too); without one, the test is refused or rlimited."""
    from pytest_isolate import hostinfo

    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated(mem="64M")
        def test_limited():
            block = bytearray(256 << 20)
        """
    )
    plain = run(pytester)
    fallback = run(pytester, "-o", "isolate_limits_fallback=rlimit", "--junitxml=out.xml")
    fallback.assert_outcomes(failed=1)
    xml = (pytester.path / "out.xml").read_text()
    test = "test_limits_need_delegation_or_the_rlimit_fallback.py::test_limited"
    if capabilities.has("cgroup_delegated"):
        # The cgroup is the real limit; the fallback is only for hosts without one.
        oom = rf"FAILED {test} - isolated test was killed for exceeding the memory limit mem='64M' \(peak 6[34]\.\d MiB\)"
        for result in (plain, fallback):
            (line,) = failure_lines(result)
            assert re.fullmatch(oom, line), line
        assert '<property name="isolate_limits_enforced_by" value="cgroup" />' in xml
    else:
        version = hostinfo.cgroup_facts()["version"]
        assert failure_lines(plain) == [
            f"ERROR {test} - pytest-isolate could not set the test's limits: pytest runs as uid {os.geteuid()} "
            f"and may not create cgroups here (cgroup v{version})"
        ]
        assert failure_lines(fallback) == [f"FAILED {test} - MemoryError"]
        assert 'name="isolate_limits_enforced_by" value="rlimit (weaker than cgroups' in xml


def test_network_private_needs_root(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated(net="private")
        def test_link():
            pass
        """
    )
    (line,) = failure_lines(run(pytester))
    assert "pytest-isolate could not create the container's private network link" in line, line


def test_info_says_what_works_for_this_user() -> None:
    import subprocess
    import sys

    from pytest_isolate import hostinfo

    output = subprocess.run([sys.executable, "-m", "pytest_isolate.cli", "info"], capture_output=True, text=True, check=True).stdout
    answers = {line.split()[0]: line.split(None, 1)[1] for line in output.splitlines() if line.startswith("  ") and not line.startswith("   ")}
    assert answers["net"] == (
        'yes, except net="private": a veth link to the host needs root; use net=False, True or ["127.0.0.1:PORT"]'
    )
    assert answers["rootfs"] == (
        'yes, "host" and directories; an image only once it is in the cache: building or importing one needs root '
        "(sudo PYTEST_ISOLATE_CACHE=DIR pytest-isolate images build NAME, then isolate_cache = DIR)"
    )
    if hostinfo.cgroup_facts()["version"] == 1:
        v1 = "no: cgroup v1 cannot be delegated to a user: run as root; isolate_limits_fallback = rlimit "
        assert answers["mem"] == v1 + "makes it RLIMIT_AS (address space, weaker)"
        assert answers["pids"] == v1 + "makes it RLIMIT_NPROC (per user, weaker)"
        assert answers["cpu"] == v1 + "does not enforce it (each run lists the tests)"


def test_an_unenforced_cpu_limit_is_said_once_per_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated(cpu=0.5)
        def test_a():
            pass

        @isolated(cpu=1, mem="512M")
        def test_b():
            pass

        @isolated(mem="512M")
        def test_c():
            pass
        """
    )
    result = run(pytester, "-o", "isolate_limits_fallback=rlimit", "-n", "2")
    result.assert_outcomes(passed=3)
    notes = [line for line in result.outlines if line.startswith("pytest-isolate: cpu=")]
    if capabilities.has("cgroup_delegated"):
        # A delegated cgroup enforces cpu=: the rlimit fallback is not used, and nothing is said.
        assert notes == []
        return
    assert len(notes) == 1
    assert re.fullmatch(
        r"pytest-isolate: cpu= was not enforced for 2 test\(s\): rootless without a delegated cgroup, "
        r"isolate_limits_fallback = rlimit has no CPU limit: "
        r"test_an_unenforced_cpu_limit_is_said_once_per_run.py::test_[ab], test_an_unenforced_cpu_limit_is_said_once_per_run.py::test_[ab]",
        notes[0],
    ), notes


def test_etc_in_a_rootless_container(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """New files can be made and root's files deleted (in the layer); changed in place only where fuse squashes owners."""
    pytester.makepyfile(
        """
        import os, pytest
        from pytest_isolate import isolated

        @isolated
        def test_etc():
            with open("/etc/pytest-isolate-rootless-new", "w") as handle:
                handle.write("made")
            if os.environ["ROOTS_FILES"] == "read-only":
                with pytest.raises(PermissionError):
                    open("/etc/hostname", "a")
            else:
                open("/etc/hostname", "a").close()
            os.remove("/etc/hostname")
            assert not os.path.exists("/etc/hostname")
        """
    )
    from pytest_isolate.container import storage

    # fuse-overlayfs with squash_to_root (auto, where this user may use it) makes root's files the container
    # root's; the kernel's overlay in a user namespace leaves them read-only to it.
    driver = storage.choose("auto", rootless=True)
    monkeypatch.setenv("ROOTS_FILES", "writable" if driver == "fuse" else "read-only")
    run(pytester).assert_outcomes(passed=1)
    assert os.path.exists("/etc/hostname") and not os.path.exists("/etc/pytest-isolate-rootless-new")


# Where mmdebstrap is missing, that is what the user is told first (and
# rightly): the "needs root" advice is for a host that has the tool.
@pytest.mark.requires("mmdebstrap")
def test_an_image_that_needs_building_says_what_to_run_as_root(pytester: pytest.Pytester) -> None:
    (pytester.path / "recipes").mkdir()
    (pytester.path / "recipes" / "mine.toml").write_text(
        'name = "mine"\ndescription = "a base image"\n[base]\ntool = "mmdebstrap"\nsuite = "bookworm"\nvariant = "minbase"\n'
    )
    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated(rootfs="mine")
        def test_a():
            pass
        """
    )
    result = run(pytester, "-o", "isolate_images=recipes", "-o", f"isolate_cache={pytester.path / 'cache'}")
    (line,) = failure_lines(result)
    assert line == (
        "ERROR test_an_image_that_needs_building_says_what_to_run_as_root.py::test_a - pytest-isolate could not "
        "prepare the root filesystem image: building image 'mine' needs root (it mounts overlays and runs chroot); "
        f"this process runs as uid {os.geteuid()}: run `sudo pytest-isolate images build mine` first (with the same "
        "cache: PYTEST_ISOLATE_CACHE or isolate_cache), or run pytest as root in CI"
    )


# A seccomp filter that refuses mount(2) and fsopen(2) with EPERM (x86-64), then runs pytest: in a fresh user
# namespace the first mount fails exactly as under Ubuntu's AppArmor restriction, which this kernel lacks.
REFUSE_MOUNT = """
import os, struct, sys
from pytest_isolate.container import hardening

def instruction(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)

LOAD, JEQ, RET = 0x20, 0x15, 0x06
EPERM, ALLOW = 0x00050000 | 1, 0x7FFF0000
program = [instruction(LOAD, 0, 0, 4), instruction(JEQ, 1, 0, 0xC000003E), instruction(RET, 0, 0, ALLOW)]
program.append(instruction(LOAD, 0, 0, 0))
for number in (165, 430):  # mount, fsopen
    program += [instruction(JEQ, 0, 1, number), instruction(RET, 0, 0, EPERM)]
program.append(instruction(RET, 0, 0, ALLOW))
hardening.set_no_new_privs()
hardening.install_seccomp_filter(b"".join(program))
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""

APPARMOR_TESTS = """
from pytest_isolate import isolated

@isolated
def test_a():
    pass

@isolated(mem="64M")
def test_b():
    pass

def test_not_isolated():
    pass
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the stand-in's seccomp filter is written for x86-64")
@pytest.mark.parametrize(
    ("switch", "mount_refused"),
    [("1", True), ("0", True), ("1", False), (None, False)],
    ids=["restricted", "switch-off-but-refused", "switch-on-but-allowed", "no-switch"],
)
def test_apparmor_userns_restriction_is_diagnosed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, switch: str | None, mount_refused: bool
) -> None:
    """The diagnosis needs the switch (a stand-in file) *and* the symptom (a mount the kernel refuses)."""
    from pytest_isolate.container import apparmor_userns

    sysctl = pytester.path / "apparmor_restrict_unprivileged_userns"
    if switch is not None:
        sysctl.write_text(switch + "\n")
    monkeypatch.setenv(apparmor_userns.SYSCTL_VARIABLE, str(sysctl))
    pytester.makepyfile(test_rootless_here=APPARMOR_TESTS)
    (pytester.path / "refuse_mount.py").write_text(REFUSE_MOUNT)
    wrapper = [sys.executable, "refuse_mount.py"] if mount_refused else [sys.executable]
    result = pytester.run(
        *wrapper, "-m", "pytest", "-p", "no:cacheprovider", "-ra", "-o", "isolate_limits_fallback=rlimit", f"--basetemp={pytester.path / 'tmp'}"
    )
    info = pytester.run(*wrapper, "-m", "pytest_isolate.cli", "info").outlines
    (line,) = [line for line in info if line.startswith(" AppArmor Userns: ")]
    if not mount_refused:
        result.assert_outcomes(passed=3)
        assert line == (
            " AppArmor Userns: on (kernel.apparmor_restrict_unprivileged_userns = 1), but user namespaces work for this process"
            if switch
            else " AppArmor Userns: no such switch on this kernel (kernel.apparmor_restrict_unprivileged_userns)"
        )
        return
    result.assert_outcomes(passed=1, errors=2)
    head = f"pytest-isolate could not create the container: pytest runs as uid {os.geteuid()}, and "
    if switch == "0":
        reason = (
            "this host does not let it build a container in a user namespace: refused at 'mount a tmpfs' "
            "(EPERM: Operation not permitted): the seccomp filter refuses mount"
        )
        assert line == " AppArmor Userns: off (kernel.apparmor_restrict_unprivileged_userns = 0)"
    else:
        reason = (
            "AppArmor restricts unprivileged user namespaces here (kernel.apparmor_restrict_unprivileged_userns = 1, "
            "the default on Ubuntu 23.10 and later, GitHub Actions' ubuntu-24.04 runners included): the user namespace "
            "is made, but with no capabilities in it, so the first mount in it fails with EPERM"
        )
        assert line == f" AppArmor Userns: on, and it refuses rootless containers: {reason}"
        remedies = apparmor_userns.remedies(os.path.realpath(sys.executable)).splitlines()
        assert remedies[0] == "three ways out:" and len(remedies) == 10
        # Every isolated test's message, and info, end with the three ways out, the profile for this Python.
        assert result.stdout.str().count("\n".join(remedies)) == 2
        assert "\n".join(info).count("\n".join("  " + entry for entry in remedies)) == 1
        assert "  mem       no: AppArmor restricts unprivileged user namespaces here: see AppArmor Userns above for the three ways out" in info
    assert sorted(failure_lines(result)) == [f"ERROR test_rootless_here.py::test_{name} - {head}{reason}" for name in "ab"]


WRITE_ANYWHERE = """
import os, shutil
from pytest_isolate import isolated

@isolated
def test_writes_and_deletes_root_s_files():
    # Inside a container, or stop: PID 2 under the container's init (named by its argv[0]).
    assert os.getpid() == 2 and open("/proc/1/cmdline", "rb").read().split(b"\\0")[0] == b"pytest-isolate-init"
    os.makedirs("/usr/share/pytest-isolate-x")
    shutil.rmtree("/usr/share/doc")
    assert not os.path.exists("/usr/share/doc") and os.path.isdir("/usr/share/pytest-isolate-x")
    with open("/usr/share/pytest-isolate-x/f", "w") as handle:
        handle.write("made")
"""


@pytest.mark.requires("rootless_fuse")
def test_a_test_may_write_and_delete_anywhere_as_under_root(pytester: pytest.Pytester) -> None:
    """Rootless with fuse-overlayfs (squash_to_root): the host root's files are the container root's."""
    assert os.path.isdir("/usr/share/doc")
    pytester.makepyfile(WRITE_ANYWHERE)
    run(pytester, "-o", "isolate_storage=fuse").assert_outcomes(passed=1)
    assert os.path.isdir("/usr/share/doc") and not os.path.exists("/usr/share/pytest-isolate-x")


def test_info_names_the_storage_driver_and_why() -> None:
    import subprocess
    import sys

    from pytest_isolate.container.overlay_probe import fuse_usable

    output = subprocess.run([sys.executable, "-m", "pytest_isolate.cli", "info"], capture_output=True, text=True, check=True).stdout
    lines = output.splitlines()
    where = lines.index(next(line for line in lines if line.startswith(" Storage Driver: ")))
    from pytest_isolate.container.overlay_probe import probe

    usable, why_not = fuse_usable()
    kernel = probe(True)
    fuse_why = (
        "fuse-overlayfs with squash_to_root: rootless, every file is the container root's, "
        "so a test may change or delete any file, as under root"
    )
    kernel_limit = "the test cannot change or delete the host root's files (they are nobody's in a user namespace)"
    if usable and kernel.usable:
        assert lines[where : where + 2] == [
            " Storage Driver: fuse",
            f"  Why: {fuse_why}; isolate_storage = overlay is faster, but there {kernel_limit}",
        ]
    elif usable:
        assert lines[where : where + 2] == [
            " Storage Driver: fuse",
            f"  Why: {fuse_why}; the kernel's overlay failed in a user namespace ({kernel.failure})",
        ]
    elif kernel.usable:
        assert lines[where : where + 2] == [
            " Storage Driver: overlay",
            f"  Why: the kernel's overlay in a user namespace: {kernel_limit}; fuse-overlayfs, which would let it, "
            f"cannot be used here: {why_not}",
        ]
    else:
        assert lines[where] == " Storage Driver: none"


def _kernel_overlay_in_userns_fails() -> bool:
    from pytest_isolate.container.overlay_probe import probe

    return os.geteuid() != 0 and not probe(True).usable


@pytest.mark.skipif(not _kernel_overlay_in_userns_fails(), reason="the kernel's overlay works in a user namespace here")
def test_a_kernel_overlay_that_cannot_write_is_refused_with_the_cause(pytester: pytest.Pytester) -> None:
    """Linux < 6.6: tmpfs lacks user.* xattrs, and a userxattr overlay on it fails with EIO (issue 11)."""
    from pytest_isolate.container.overlay_probe import fuse_usable, probe

    found = probe(True)
    pytester.makepyfile("from pytest_isolate import isolated\n\n@isolated\ndef test_it():\n    pass\n")
    (line,) = failure_lines(run(pytester, "-o", "isolate_storage=overlay"))
    assert line == (
        "ERROR test_a_kernel_overlay_that_cannot_write_is_refused_with_the_cause.py::test_it - pytest-isolate could not "
        f"build the container's filesystem: pytest runs as uid {os.geteuid()}, and a trial overlay in a user namespace "
        f"failed: {found.failure}"
        + ("" if found.tmpfs_user_xattrs is not False else "; this kernel's tmpfs takes no user.* xattrs (Linux 6.6 adds them), "
           "which the kernel's overlay needs in a user namespace")
        + (f"; fuse-overlayfs, the other way, cannot be used: {fuse_usable()[1]}" if not fuse_usable()[0] else "")
    )
