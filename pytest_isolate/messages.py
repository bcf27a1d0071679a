"""What a container may say to pytest, parsed at the edge (the trust boundary).

Everything that arrives on a container's report pipe was written by a
process that ran the test's code, so it is hostile until proven otherwise.
:func:`parse` turns one decoded JSON line into one of the frozen message
types below or raises :class:`ProtocolViolation`; nothing past it touches
raw dicts.  The host never executes, unpickles, imports or follows anything
a message names: reports are plain data checked field by field before
pytest's own ``pytest_report_from_serializable`` sees them, coverage is
line and arc numbers, and which test a message belongs to is the host's
knowledge (a message may only confirm it).

Trust has one more dimension: time.  The container machinery (our code,
before the test's code runs) speaks first and ends its part with "ready";
only what came before "ready" can describe the container (its layers'
descriptor).  After it, the test process may send reports, warnings,
coverage, an error and "done", and nothing else.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Union

# Longest text a message may carry in one field (a failure's traceback with
# -vv can be long; anything longer is not something pytest would show).
MAX_TEXT = 4 << 20
PHASES = ("setup", "call", "teardown")
OUTCOMES = ("passed", "failed", "skipped")
# Largest line number coverage accepts (no source file has ten million lines).
MAX_LINE_NUMBER = 10_000_000
# Most warnings one test may report (pytest shows each in its summary).
MAX_WARNINGS = 1000


class ProtocolViolation(Exception):
    """The container sent something outside the protocol: its test fails with ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclasses.dataclass(frozen=True)
class Ready:
    """The machinery built the container; the test's code runs from here on."""

    stage_fd: int | None  # the test process's descriptor of its writable layers (--isolate-diff)
    stage_id: tuple[int, int] | None  # (st_dev, st_ino) of that tmpfs, to recognise it later


@dataclasses.dataclass(frozen=True)
class Report:
    data: dict[str, Any]  # checked: fit for pytest_report_from_serializable
    when: str
    subtest: bool


@dataclasses.dataclass(frozen=True)
class RecordedWarning:
    message: str
    category: str  # a dotted name, looked up only among modules pytest imported
    filename: str
    lineno: int
    when: str


@dataclasses.dataclass(frozen=True)
class Coverage:
    arcs: bool
    # context -> file -> line numbers, or (from, to) arcs
    contexts: dict[str, dict[str, tuple[Any, ...]]]


@dataclasses.dataclass(frozen=True)
class Error:
    stage: str
    reason: str
    advice: str


@dataclasses.dataclass(frozen=True)
class Done:
    cpu_seconds: float | None
    peak_rss: int | None


Message = Union[Ready, Report, RecordedWarning, Coverage, Error, Done]


class Parser:
    """Parses the messages of one test's container, in order, enforcing the protocol's sequence."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self.ready = False
        self._phases: list[str] = []
        self._warnings = 0

    def parse(self, raw: object) -> Message:
        fields = _mapping(raw, "a message")
        kind = fields.get("kind")
        if not self.ready:
            if kind == "ready":
                self.ready = True
                return _ready(fields)
            if kind == "error":
                return _error(fields)
            raise ProtocolViolation(f"a {_short(kind)} message before the container was ready")
        if kind == "report":
            return self._report(fields)
        if kind == "warning":
            return self._warning(fields)
        if kind == "coverage":
            return _coverage(fields)
        if kind == "error":
            return _error(fields)
        if kind == "done":
            return _done(fields)
        raise ProtocolViolation(f"a message of unknown kind {_short(kind)}")

    def _report(self, fields: dict[str, Any]) -> Report:
        data = _mapping(fields.get("report"), "a report")
        report_type = data.get("$report_type", data.get("_report_type"))
        subtest = data.get("_report_type") == "SubTestReport"
        if not subtest and data.get("$report_type") != "TestReport":
            raise ProtocolViolation(f"a report of type {_short(report_type)} (only test reports are expected)")
        nodeid = data.get("nodeid")
        if nodeid != self.nodeid:
            raise ProtocolViolation(f"a report for {_short(nodeid)} while {self.nodeid} was running")
        when = _choice(data.get("when"), PHASES, "the report's phase")
        _choice(data.get("outcome"), OUTCOMES, "the report's outcome")
        if subtest:
            if when != "call" or self._phases != ["setup"]:
                raise ProtocolViolation("a subtest report outside the test's call phase")
            _subtest_context(data.get("_subtest.context"))
        else:
            expected = PHASES[len(self._phases)] if len(self._phases) < len(PHASES) else None
            if when != expected and not (when == "teardown" and self._phases and expected == "call"):
                raise ProtocolViolation(f"a {when} report after {self._phases or 'no'} report(s)")
            self._phases.append(when)
        _check_report_fields(data)
        return Report(data=data, when=when, subtest=subtest)

    def _warning(self, fields: dict[str, Any]) -> RecordedWarning:
        self._warnings += 1
        if self._warnings > MAX_WARNINGS:
            raise ProtocolViolation(f"more than {MAX_WARNINGS} warnings")
        if fields.get("nodeid") != self.nodeid:
            raise ProtocolViolation(f"a warning for {_short(fields.get('nodeid'))} while {self.nodeid} was running")
        return RecordedWarning(
            message=_text(fields.get("message"), "the warning's message"),
            category=_text(fields.get("category"), "the warning's category", limit=512),
            filename=_text(fields.get("filename"), "the warning's file name", limit=4096),
            lineno=_integer(fields.get("lineno"), "the warning's line number", 0, MAX_LINE_NUMBER),
            when=_choice(fields.get("when"), ("config", "collect", "runtest"), "the warning's phase"),
        )


def _ready(fields: dict[str, Any]) -> Ready:
    fd = fields.get("stage_fd")
    if fd is None:
        return Ready(None, None)
    stage_id = fields.get("stage_id")
    if not (isinstance(stage_id, list) and len(stage_id) == 2):
        raise ProtocolViolation("a ready message without the layers' identity")
    return Ready(
        _integer(fd, "the layers' descriptor", 0, 1 << 20),
        (_integer(stage_id[0], "the layers' device", 0, 1 << 62), _integer(stage_id[1], "the layers' inode", 0, 1 << 62)),
    )


def _error(fields: dict[str, Any]) -> Error:
    return Error(
        stage=_text(fields.get("stage"), "the error's stage", limit=512),
        reason=_text(fields.get("reason"), "the error's reason"),
        advice=_text(fields.get("advice", ""), "the error's advice"),
    )


def _done(fields: dict[str, Any]) -> Done:
    cpu = fields.get("cpu_seconds")
    rss = fields.get("peak_rss")
    return Done(
        cpu_seconds=None if cpu is None else _number(cpu, "the CPU time", 0, 1e9),
        peak_rss=None if rss is None else _integer(rss, "the peak RSS", 0, 1 << 50),
    )


def _coverage(fields: dict[str, Any]) -> Coverage:
    arcs = fields.get("arcs")
    if not isinstance(arcs, bool):
        raise ProtocolViolation("coverage data that says neither lines nor arcs")
    contexts: dict[str, dict[str, tuple[Any, ...]]] = {}
    for context, files in _mapping(fields.get("contexts"), "coverage contexts").items():
        checked: dict[str, tuple[Any, ...]] = {}
        for path, numbers in _mapping(files, "coverage files").items():
            if not (isinstance(path, str) and path.startswith("/") and "\0" not in path and len(path) <= 4096):
                raise ProtocolViolation(f"coverage for {_short(path)}, which is not an absolute path")
            if not isinstance(numbers, list):
                raise ProtocolViolation(f"coverage of {path} that is not a list")
            if arcs:
                checked[path] = tuple(_arc(pair) for pair in numbers)
            else:
                checked[path] = tuple(_integer(n, "a covered line", 0, MAX_LINE_NUMBER) for n in numbers)
        contexts[_text(context, "a coverage context", limit=4096)] = checked
    return Coverage(arcs=arcs, contexts=contexts)


def _arc(pair: object) -> tuple[int, int]:
    if not (isinstance(pair, list) and len(pair) == 2):
        raise ProtocolViolation(f"a covered arc {_short(pair)} that is not a pair of line numbers")
    low = -MAX_LINE_NUMBER
    return (_integer(pair[0], "an arc's start", low, MAX_LINE_NUMBER), _integer(pair[1], "an arc's end", low, MAX_LINE_NUMBER))


# --------------------------------------------------------------- reports

# Fields pytest's TestReport serializes; anything else a plugin set on the
# report in the container travels as plain data, as pytest-xdist carries it
# (Hypothesis's statistics, ``_hypothesis_stats``; pytest-html's ``extra``),
# unless its name is one of the report classes' own (an instance attribute
# "toterminal" would shadow the method and crash the terminal summary), a
# dunder, or a mark pytest itself sets on a report in its own process.
_REPORT_FIELDS = {
    "$report_type", "_report_type", "_subtest.context", "nodeid", "location", "keywords", "outcome",
    "longrepr", "when", "user_properties", "sections", "duration", "start", "stop",
}  # fmt: skip
# _pdbshown: --pdb showed this failure; the terminal leaves it out of its summary.
_PYTEST_OWN_MARKS = frozenset({"_pdbshown"})


def _check_report_fields(data: dict[str, Any]) -> None:
    _location(data.get("location"))
    keywords = _mapping(data.get("keywords", {}), "the report's keywords")
    for key in keywords:
        _text(key, "a keyword", limit=4096)
    for entry in _list(data.get("user_properties", []), "the report's user properties"):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ProtocolViolation(f"a user property {_short(entry)} that is not a (name, value) pair")
    for entry in _list(data.get("sections", []), "the report's sections"):
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)):
            raise ProtocolViolation(f"a report section {_short(entry)} that is not a (title, text) pair")
    # Any finite time: a test that fakes the clock (freezegun, a patched
    # time.perf_counter) gets reports with a negative duration in a plain run too.
    for name in ("duration", "start", "stop"):
        if name in data:
            _number(data[name], f"the report's {name}", -1e12, 1e12)
    _longrepr(data.get("longrepr"))
    for name in data:
        if name not in _REPORT_FIELDS and (name.startswith("__") or name in _PYTEST_OWN_MARKS or name in _report_attributes()):
            raise ProtocolViolation(f"a report attribute {_short(name)} that reports may not carry")
    if "wasxfail" in data:
        _text(data["wasxfail"], "the report's xfail reason")


def _report_attributes() -> frozenset[str]:
    """The names of the report classes' own attributes, methods and properties (a subtest's too)."""
    global _ATTRIBUTES
    if _ATTRIBUTES is None:
        import pytest

        names = set(dir(pytest.TestReport))
        for module in ("_pytest.subtests", "pytest_subtests"):  # pytest 9's own subtests, the older plugin
            try:
                classes = vars(__import__(module, fromlist=["*"])).values()
            except ImportError:
                continue
            for value in classes:
                if isinstance(value, type) and issubclass(value, pytest.TestReport):
                    names.update(dir(value))
        _ATTRIBUTES = frozenset(names)
    return _ATTRIBUTES


_ATTRIBUTES: frozenset[str] | None = None


def _location(value: object) -> None:
    if not (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], str)
        and (value[1] is None or isinstance(value[1], int))
        and isinstance(value[2], str)
    ):
        raise ProtocolViolation(f"a report location {_short(value)} that is not (path, line, name)")


def _longrepr(value: object) -> None:
    """None, a text, a skip's (path, line, reason), or an exception representation."""
    if value is None or isinstance(value, str):
        return
    if isinstance(value, list):
        if len(value) == 3 and isinstance(value[0], str) and isinstance(value[1], (int, type(None))) and isinstance(value[2], str):
            return
        raise ProtocolViolation(f"a failure representation {_short(value)} that is not (path, line, reason)")
    fields = _mapping(value, "a failure representation")
    if set(fields) != {"reprcrash", "reprtraceback", "sections", "chain"}:
        raise ProtocolViolation(f"a failure representation with the fields {_short(sorted(fields))}")
    _crash(fields["reprcrash"])
    _traceback(fields["reprtraceback"])
    for section in _list(fields["sections"], "the failure's sections"):
        if not (isinstance(section, list) and len(section) in (2, 3) and all(isinstance(part, str) for part in section)):
            raise ProtocolViolation(f"a failure section {_short(section)} that is not (title, text[, separator])")
    if fields["chain"] is not None:
        for link in _list(fields["chain"], "the failure's chain"):
            if not (isinstance(link, list) and len(link) == 3):
                raise ProtocolViolation(f"a failure chain link {_short(link)} that is not (traceback, crash, description)")
            _traceback(link[0])
            _crash(link[1])
            if link[2] is not None:
                _text(link[2], "a chain description")


def _crash(value: object) -> None:
    if value is None:
        return
    fields = _exact(value, {"path", "lineno", "message"}, "a failure's location")
    _text(fields["path"], "a failure's path", limit=4096)
    _integer(fields["lineno"], "a failure's line number", -1, MAX_LINE_NUMBER)
    _text(fields["message"], "a failure's message")


def _traceback(value: object) -> None:
    fields = _exact(value, {"reprentries", "extraline", "style"}, "a traceback")
    _style(fields["style"])
    if fields["extraline"] is not None:
        _text(fields["extraline"], "a traceback's extra line")
    for entry in _list(fields["reprentries"], "a traceback's entries"):
        entry_fields = _exact(entry, {"type", "data"}, "a traceback entry")
        data = _mapping(entry_fields["data"], "a traceback entry")
        if entry_fields["type"] == "ReprEntryNative":
            _exact(data, {"lines", "style"}, "a native traceback entry")
            _lines(data["lines"])
        elif entry_fields["type"] == "ReprEntry":
            _exact(data, {"lines", "reprfuncargs", "reprlocals", "reprfileloc", "style"}, "a traceback entry")
            _lines(data["lines"])
            _style(data["style"])
            if data["reprfuncargs"] is not None:
                args = _exact(data["reprfuncargs"], {"args"}, "a traceback entry's arguments")["args"]
                for arg in _list(args, "a traceback entry's arguments"):
                    if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(part, str) for part in arg)):
                        raise ProtocolViolation(f"a traceback argument {_short(arg)} that is not (name, value)")
            if data["reprlocals"] is not None:
                _lines(_exact(data["reprlocals"], {"lines"}, "a traceback entry's locals")["lines"])
            if data["reprfileloc"] is not None:
                _crash(data["reprfileloc"])
        else:
            raise ProtocolViolation(f"a traceback entry of type {_short(entry_fields['type'])}")


def _style(value: object) -> None:
    _choice(value, ("long", "short", "line", "no", "native", "value", "auto"), "a traceback style")


def _lines(value: object) -> None:
    for line in _list(value, "a traceback's lines"):
        _text(line, "a traceback line")


def _subtest_context(value: object) -> None:
    fields = _exact(value, {"msg", "kwargs"}, "a subtest's context")
    if fields["msg"] is not None:
        _text(fields["msg"], "a subtest's message")
    for key, text in _mapping(fields["kwargs"], "a subtest's arguments").items():
        _text(key, "a subtest argument's name", limit=4096)
        _text(text, "a subtest argument's value")


# ---------------------------------------------------------------- atoms


def _mapping(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolViolation(f"{what} that is not a JSON object: {_short(value)}")
    return value


def _exact(value: object, names: set[str], what: str) -> dict[str, Any]:
    fields = _mapping(value, what)
    if set(fields) != names:
        raise ProtocolViolation(f"{what} with the fields {_short(sorted(fields))}, expected {sorted(names)}")
    return fields


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ProtocolViolation(f"{what} that is not a list: {_short(value)}")
    return value


def _text(value: object, what: str, *, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise ProtocolViolation(f"{what} that is not a string: {_short(value)}")
    if len(value) > limit:
        raise ProtocolViolation(f"{what} of {len(value)} characters (at most {limit})")
    return value


def _choice(value: object, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ProtocolViolation(f"{what} {_short(value)}, expected one of {', '.join(allowed)}")
    return str(value)


def _integer(value: object, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolViolation(f"{what} {_short(value)}, expected a whole number from {low} to {high}")
    return value


def _number(value: object, what: str, low: float, high: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not low <= value <= high:
        raise ProtocolViolation(f"{what} {_short(value)}, expected a number from {low:g} to {high:g}")
    return float(value)


def _short(value: object) -> str:
    """A container's value, quoted for a message and cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
