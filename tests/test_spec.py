"""Parsing and precedence of marker arguments and options (pure Python)."""

from __future__ import annotations

import pytest

from pytest_isolate.errors import SpecError
from pytest_isolate.spec import IsolationSpec, Setting, format_bytes, parse_size, resolve_spec


@pytest.mark.parametrize(
    ("value", "size"),
    [(1024, 1024), ("512K", 512 << 10), ("64M", 64 << 20), ("1.5G", 3 << 29), ("256MiB", 256 << 20),
     ("256mb", 256 << 20), ("1024", 1024), (" 2 G ", 2 << 30)],
)
def test_sizes(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["lots", "", "-1M", 0, -5, True, 1.5, "1.5.5G", "12Q", None])
def test_bad_sizes(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


def test_defaults() -> None:
    assert resolve_spec({}, {}, "t.py::test") == IsolationSpec()
    assert IsolationSpec().hostname == "isolated"
    assert IsolationSpec().disk == 1 << 30


def test_precedence_marker_over_cli_over_ini() -> None:
    defaults = {"mem": Setting("1G", "cli"), "cpu": Setting("0.5", "ini")}
    spec = resolve_spec(defaults, {"mem": "64M"}, "t.py::test")
    assert (spec.mem, spec.mem_text, spec.cpu) == (64 << 20, "64M", 0.5)


def test_error_names_source_argument_value_and_expectation() -> None:
    with pytest.raises(SpecError) as marker_error:
        resolve_spec({}, {"pids": 0}, "t.py::test")
    assert str(marker_error.value) == (
        "t.py::test: @isolated(pids=0) is invalid: expected a whole number of processes from 1 up, such as 64"
    )
    with pytest.raises(SpecError) as ini_error:
        resolve_spec({"cpu": Setting("fast", "ini")}, {}, "t.py::test")
    assert str(ini_error.value) == (
        "ini option isolate_cpu = fast is invalid: expected a number of cores from 0.01 up, such as 0.5 or 2"
    )
    assert (ini_error.value.origin, ini_error.value.argument, ini_error.value.value) == ("ini", "cpu", "fast")


@pytest.mark.parametrize(
    ("size", "text"), [(10, "10 B"), (1536, "1.5 KiB"), (64 << 20, "64.0 MiB"), (3 << 30, "3.0 GiB")]
)
def test_format_bytes(size: int, text: str) -> None:
    assert format_bytes(size) == text


def test_image_library_notes() -> None:
    from pytest_isolate.outcome import image_library_note

    loader = "python3: error while loading shared libraries: libpython3.12.so.1.0: cannot open shared object file: No such file or directory"
    assert image_library_note("debian-bookworm", loader) == (
        "the image 'debian-bookworm' lacks the shared library libpython3.12.so.1.0 that a program of the host "
        "(such as its Python, run again) needs: add the package that ships it to the image's recipe "
        "(include = [...] or a step)"
    )
    glibc = "/usr/bin/python3: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.38' not found (required by python3)"
    assert image_library_note("old", glibc) == (
        "the image 'old' has an older C library than the host's programs need (GLIBC_2.38): "
        "build the image from a newer suite, or run the image's own python3"
    )
    assert image_library_note("x", "AssertionError: 1 != 2") is None
