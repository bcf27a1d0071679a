"""Storage drivers: kernel overlayfs, fuse-overlayfs, a copy."""

from __future__ import annotations

import os

import pytest
from conftest import CONTAINER
from helpers import failure_lines, run

pytestmark = pytest.mark.requires(*CONTAINER)
# An optional host tool: skipped where absent, unless CI requires it.
FUSE = pytest.mark.requires("fuse_overlayfs")

SUITE = """
import os
from pytest_isolate import isolated

@isolated(rootfs=ROOTFS)
def test_a_writes():
    with open("/etc/os-release", "w") as handle:
        handle.write("changed inside")

@isolated(rootfs=ROOTFS)
def test_b_sees_the_original():
    assert open("/etc/os-release").read() == "tiny\\n"
"""


@pytest.fixture
def tiny_root(tmp_path):
    root = tmp_path / "tiny-root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("tiny\n")
    return root


@pytest.mark.parametrize("driver", ["overlay", pytest.param("fuse", marks=FUSE), "copy"])
def test_each_driver_discards_writes(pytester: pytest.Pytester, tiny_root, driver: str) -> None:
    pytester.makepyfile(SUITE.replace("ROOTFS", repr(str(tiny_root))))
    run(pytester, "-o", f"isolate_storage={driver}").assert_outcomes(passed=2)
    assert (tiny_root / "etc" / "os-release").read_text() == "tiny\n"


@FUSE
def test_fuse_overlayfs_over_the_host_root(pytester: pytest.Pytester) -> None:
    probe = f"/etc/pytest-isolate-fuse-{os.getpid()}"
    pytester.makepyfile(
        f"""
        import os
        from pytest_isolate import isolated

        @isolated
        def test_writes_etc():
            with open({probe!r}, "w") as handle:
                handle.write("x")
            assert os.getpid() == 2
        """
    )
    run(pytester, "-o", "isolate_storage=fuse").assert_outcomes(passed=1)
    assert not os.path.exists(probe)


def test_copy_refuses_the_host_root(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated
        def test_it():
            pass
        """
    )
    assert failure_lines(run(pytester, "-o", "isolate_storage=copy")) == [
        "ERROR test_copy_refuses_the_host_root.py::test_it - pytest-isolate could not copy the root filesystem: "
        "isolate_storage = copy cannot copy the host's whole root for every test"
    ]


def test_unknown_driver(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("from pytest_isolate import isolated\n\n@isolated\ndef test_it():\n    pass\n")
    result = run(pytester, "-o", "isolate_storage=zfs")
    # Refused when pytest starts, before any test runs.
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.errlines[0] == "ERROR: ini option isolate_storage = zfs is invalid: expected one of auto, overlay, fuse, copy"


@pytest.mark.requires("overlay")
def test_overlay_is_found_by_trying_a_mount() -> None:
    """A stock Debian kernel lists overlay in /proc/filesystems only once a mount loaded the module (issue 11)."""
    from pytest_isolate.container import overlay_probe, storage

    overlay_probe.probe.cache_clear()
    found = overlay_probe.probe(os.geteuid() != 0)
    assert found.mounts
    # Rootless before Linux 6.6 (tmpfs without user.* xattrs) the overlay mounts but cannot write.
    writes = os.geteuid() == 0 or found.tmpfs_user_xattrs is True
    assert (found.writes, found.failure == "") == (writes, writes), found
    with open("/proc/filesystems", encoding="ascii") as handle:
        assert "overlay" in {line.split()[-1] for line in handle if line.split()}
    if os.geteuid() == 0:
        assert storage.explain("auto", rootless=False) == ("overlay", "the kernel's overlayfs")
