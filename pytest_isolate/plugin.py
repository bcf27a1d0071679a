"""pytest entry point (``pytest11``: ``isolate``): options, marker and hooks.

Kept cheap: pytest imports this module on every run of every project that
has the plugin installed.  The container machinery (``runtime``) is imported
when the first isolated test runs.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import TYPE_CHECKING

import pytest

from pytest_isolate import forwarding, repeat, summary
from pytest_isolate.errors import SpecError
from pytest_isolate.settings import Settings
from pytest_isolate.spec import ARGUMENTS, MARKER_SIGNATURE, IsolationSpec, Setting, check_setting, resolve_spec

if TYPE_CHECKING:
    from pytest_isolate.runtime import Runtime

# Help text per argument, written once, used for the option and the ini key.
HELP = {
    "mem": 'memory limit of each isolated test, swap included: bytes or "512K", "64M", "1.5G", "256MiB"',
    "cpu": "CPU limit of each isolated test in cores, e.g. 0.5 (a CFS quota)",
    "pids": "most processes/threads an isolated test may have at once",
    "timeout": "seconds of wall time after which every process of an isolated test is killed",
    "net": 'false (default): only the container\'s own loopback; true or "host": the host\'s network; '
    '"private": a veth link to the host; "127.0.0.1:5432,localhost:6379": loopback plus these host services',
    "hostname": 'hostname inside the container (default "isolated")',
    "rootfs": 'root filesystem of the container: "host" (default, an overlay snapshot of /), an image '
    'name (rootfs-images/, isolate_images) such as "debian-bookworm", or a directory',
    "disk": 'size of the container\'s writable layer (default "1G"); past it writes fail with ENOSPC',
    "budget_mem": "soft memory bound of each isolated test: a passing test above it is reported (see --isolate-budget-strict)",
    "budget_cpu": "soft bound on the CPU seconds of each isolated test: a passing test above it is reported",
    "net_rate": 'bandwidth limit on every interface of the container, loopback included, e.g. "1mbit"',
    "user": "run isolated tests in a user namespace: root inside is the unprivileged user nobody outside",
    "inherit_fds": "let isolated tests keep pytest's open files and sockets (a session fixture's connection): "
    "for trusted tests only, see SECURITY.md",
    "caps": "capabilities added to the test's reduced default set, comma-separated (e.g. SYS_PTRACE); see SECURITY.md",
    # issue 10: the host's secrets
    "secrets": "let isolated tests see the host's credential files (~/.ssh, ~/.aws, /etc/shadow, ...): hidden by default",
    "env": 'environment variables isolated tests see: "default" (all but those that look like credentials), '
    '"all", "none", names to pass ("PATH,HOME,LC_*") or changes ("-DATABASE_URL,+GITHUB_TOKEN"); see SECURITY.md',
}
SWITCHES = ("user", "inherit_fds", "secrets")  # arguments whose command-line option is a flag: --isolate-user
ISOLATE_ALL_HELP = "run every test in its own container, not only those marked @isolated"
BUDGET_STRICT_HELP = "fail a passing isolated test that went over budget_mem or budget_cpu (default: a warning)"
REPORT_HELP = "after the run, show the greediest isolated tests by peak memory and by CPU time"
REPORT_TOP_HELP = "how many tests the --isolate-report tables show (default 10)"
NET_RANGE_HELP = 'the private range veth links of net="private" take addresses from (default 10.213.0.0/16)'
LIMITS_FALLBACK_HELP = (
    'rootless without a delegated cgroup: "rlimit" enforces mem and pids with rlimits (weaker, and said so '
    "in the report); empty (default): such a test fails with what to run to get delegation"
)
STORAGE_HELP = "storage driver: auto (default: overlay, else fuse-overlayfs, else copy), overlay, fuse or copy"
PREPARE_HELP = "as root, build the next test's container while the current test runs (default true; false: each test builds its own)"
IMAGES_HELP = "directories with your own image recipes (*.toml), searched before the built-in ones"
CACHE_HELP = "where built image layers are kept (default: $PYTEST_ISOLATE_CACHE or ~/.cache/pytest-isolate)"
JSON_HELP = "write every isolated test's limits, usage and outcome to this JSON file"
COMPARE_HELP = "after the run, show the tests whose peak memory or CPU time grew against this earlier --isolate-json file"
DIFF_HELP = "add to each isolated test's report the files it added (A), changed (C) and deleted (D)"
DIFF_FAIL_HELP = "fail an isolated test that wrote under these path prefixes, e.g. /etc /usr"
COMPARE_THRESHOLD_HELP = "growth that --isolate-compare reports, as a fraction (default 0.2: 20%)"
COMPARE_MIN_MEM_HELP = "--isolate-compare ignores peak memory growth smaller than this (default 8M)"
COMPARE_MIN_CPU_HELP = "--isolate-compare ignores CPU time growth smaller than this many seconds (default 0.5)"
KEEP_HELP = (
    "keep the writable layer of isolated tests that failed (failed), of every isolated test (all), "
    "or of none (none, the default); the last 3 runs are kept (pytest-isolate kept)"
)


SETTINGS_KEY = pytest.StashKey[Settings]()
SPEC_KEY = pytest.StashKey["IsolationSpec | SpecError"]()
RUNTIME_KEY = pytest.StashKey["Runtime"]()


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_isolate import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("isolate", "run tests in throw-away containers (pytest-isolate)")
    group.addoption("--isolate", action="store_true", default=None, help=ISOLATE_ALL_HELP)
    parser.addini("isolate", ISOLATE_ALL_HELP, type="bool", default=False)
    group.addoption("--isolate-budget-strict", action="store_true", default=None, help=BUDGET_STRICT_HELP)
    parser.addini("isolate_budget_strict", BUDGET_STRICT_HELP, type="bool", default=False)
    group.addoption("--isolate-report", action="store_true", default=None, help=REPORT_HELP)
    parser.addini("isolate_report", REPORT_HELP, type="bool", default=False)
    parser.addini("isolate_report_top", REPORT_TOP_HELP, default="10")
    parser.addini("isolate_net_range", NET_RANGE_HELP, default="10.213.0.0/16")
    parser.addini("isolate_limits_fallback", LIMITS_FALLBACK_HELP, default="")
    parser.addini("isolate_images", IMAGES_HELP, type="paths", default=[])
    parser.addini("isolate_storage", STORAGE_HELP, default="auto")
    parser.addini("isolate_prepare", PREPARE_HELP, type="bool", default=True)
    parser.addini("isolate_cache", CACHE_HELP, default="")
    group.addoption("--isolate-json", metavar="PATH", default=None, help=JSON_HELP)
    group.addoption("--isolate-compare", metavar="OLD.json", default=None, help=COMPARE_HELP)
    parser.addini("isolate_compare_threshold", COMPARE_THRESHOLD_HELP, default="0.2")
    parser.addini("isolate_compare_min_mem", COMPARE_MIN_MEM_HELP, default="8M")
    parser.addini("isolate_compare_min_cpu", COMPARE_MIN_CPU_HELP, default="0.5")
    group.addoption("--isolate-keep", metavar="failed|all|none", default=None, help=KEEP_HELP)
    parser.addini("isolate_keep", KEEP_HELP, default="none")
    group.addoption("--isolate-diff", action="store_true", default=None, help=DIFF_HELP)
    parser.addini("isolate_diff", DIFF_HELP, type="bool", default=False)
    group.addoption("--isolate-diff-fail", metavar="PREFIXES", default=None, help=DIFF_FAIL_HELP + " (comma-separated)")
    parser.addini("isolate_diff_fail", DIFF_FAIL_HELP, type="args", default=[])
    for argument in ARGUMENTS:
        flag = f"--isolate-{argument.replace('_', '-')}"
        if argument in SWITCHES:  # a flag: --isolate-user
            group.addoption(flag, dest=f"isolate_{argument}", action="store_const", const="true", default=None, help=HELP[argument])
        else:
            group.addoption(flag, dest=f"isolate_{argument}", metavar="VALUE", default=None, help=HELP[argument])
        parser.addini(f"isolate_{argument}", HELP[argument], default="")
    # Flake hunting (--isolate-repeat, repeat.py) and the CI summary (summary.py).
    repeat.add_options(group, parser)
    summary.add_options(group, parser)


def read_settings(config: pytest.Config) -> Settings:
    """The one place that orders built-in default < ini < command line."""
    from pytest_isolate.config_checks import read_keep

    defaults: dict[str, Setting] = {}
    for argument in ARGUMENTS:
        ini_value = config.getini(f"isolate_{argument}")
        if isinstance(ini_value, str) and ini_value.strip():
            defaults[argument] = Setting(ini_value.strip(), "ini")
        cli_value = config.getoption(f"isolate_{argument}")
        if cli_value is not None:
            defaults[argument] = Setting(cli_value, "cli")
        if argument in defaults:
            check_setting(argument, defaults[argument])
            if argument == "rootfs":
                _check_image(config, defaults[argument])
    return Settings(
        isolate_all=_flag(config, "isolate"),
        defaults=defaults,
        budget_strict=_flag(config, "isolate_budget_strict"),
        diff=_flag(config, "isolate_diff"),
        diff_fail=_diff_fail_prefixes(config),
        keep=read_keep(config),
    )


def _check_image(config: pytest.Config, setting: Setting, where: str | None = None) -> None:
    """A rootfs that names an image must name one that exists (checked before any test runs)."""
    from pytest_isolate.config_checks import image_problem

    problem = image_problem(config, str(setting.value))
    if problem is not None:
        raise SpecError(setting.origin, "rootfs", setting.value, f"a recipe or an imported image: {problem}", where=where)


def _diff_fail_prefixes(config: pytest.Config) -> tuple[str, ...]:
    cli = config.getoption("isolate_diff_fail")
    prefixes = [p for p in cli.split(",") if p.strip()] if cli is not None else config.getini("isolate_diff_fail")
    for prefix in prefixes:
        if not prefix.strip().startswith("/"):
            origin = "cli" if cli is not None else "ini"
            raise SpecError(origin, "diff_fail", prefix, "absolute path prefixes such as /etc /usr")
    return tuple(prefix.strip() for prefix in prefixes)


def _flag(config: pytest.Config, name: str) -> bool:
    """A switch with an ini key and a command-line flag; the flag wins."""
    cli = config.getoption(name)
    return bool(config.getini(name)) if cli is None else bool(cli)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER_SIGNATURE}: run the test in its own throw-away Linux container "
        "(overlay snapshot of the root, new namespaces, cgroup limits)",
    )
    from pytest_isolate import config_checks

    try:
        config_checks.check_switches(config)
        config.stash[SETTINGS_KEY] = read_settings(config)
        config_checks.check_all(config)
    except SpecError as error:
        raise pytest.UsageError(str(error)) from None
    if config.pluginmanager.hasplugin("rerunfailures"):
        from pytest_isolate import rerun

        rerun.install(config, _isolated_attempt)
    if not hasattr(config, "workerinput"):  # the process that prints and writes files
        from pytest_isolate.usage_report import UsageReporter, wanted

        if wanted(config):
            config.pluginmanager.register(UsageReporter(config), "pytest-isolate-usage-report")
        if os.geteuid() != 0:  # rootless: a limit the rlimit fallback cannot enforce is said
            from pytest_isolate.unenforced import UnenforcedLimits

            config.pluginmanager.register(UnenforcedLimits(), "pytest-isolate-unenforced-limits")
        if config.stash[SETTINGS_KEY].keep != "none":
            from pytest_isolate import keep

            keep.run_dir_for(config)  # made here, before xdist starts its workers: they share it
            config.pluginmanager.register(keep.KeptSummary(), "pytest-isolate-kept-summary")
    # Flake hunting and the CI summary: their options are checked here, before the run.
    try:
        repeating = repeat.configure(config)
        summary.configure(config)
    except SpecError as error:
        raise pytest.UsageError(str(error)) from None
    if repeating is not None and not hasattr(config, "workerinput"):  # the process that reports
        from pytest_isolate.flakes import FlakeReporter

        config.pluginmanager.register(FlakeReporter(config, repeating), "pytest-isolate-flakes")


def pytest_report_header(config: pytest.Config) -> str | None:
    if not config.stash[SETTINGS_KEY].isolate_all and repeat.settings_of(config) is None:
        return None
    from pytest_isolate.hostinfo import header_line

    return header_line(str(config.getini("isolate_storage")))


def _is_isolated(item: pytest.Item) -> bool:
    if repeat.settings_of(item.config) is not None:
        return True  # --isolate-repeat: every run in a fresh container
    return item.config.stash[SETTINGS_KEY].isolate_all or item.get_closest_marker("isolated") is not None


def _resolve(item: pytest.Item) -> IsolationSpec:
    """The item's spec; raises SpecError naming the test, argument and value."""
    marker_kwargs: dict[str, object] = {}
    for marker in item.iter_markers("isolated"):  # closest first: it wins per argument
        if marker.args:
            raise SpecError(
                "marker", "positional argument", marker.args[0], "keyword arguments only, e.g. @isolated(mem=\"64M\")",
                where=item.nodeid,
            )
        for name, value in marker.kwargs.items():
            marker_kwargs.setdefault(name, value)
    spec = resolve_spec(item.config.stash[SETTINGS_KEY].defaults, marker_kwargs, item.nodeid)
    if "rootfs" in marker_kwargs:
        _check_image(item.config, Setting(marker_kwargs["rootfs"], "marker"), where=item.nodeid)
    return spec


# The bad markers found while one collector (a module or class) collects.
BAD_MARKERS_KEY = pytest.StashKey[list[str]]()


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> Generator[None, object, object]:
    # Checked here, inside the collection of the module (or class): every
    # bad marker becomes a collection error of it, not an INTERNALERROR.
    result = yield
    items = result if isinstance(result, list) else [result]
    for item in items:
        if isinstance(item, pytest.Item) and _is_isolated(item):
            try:
                item.stash[SPEC_KEY] = _resolve(item)
            except SpecError as error:
                collector.stash.setdefault(BAD_MARKERS_KEY, []).append(str(error))
    return result


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """One collection error per bad marker of the collector, all of them, in the order of the tests."""
    report = yield
    bad = collector.stash.get(BAD_MARKERS_KEY, [])
    if not bad or not report.passed:
        return report
    errors = [_collection_error(collector, message) for message in bad]
    # This collector fails, so pytest will not collect its classes: check
    # them now, so that one run reports every bad marker.
    for child in report.result:
        if isinstance(child, pytest.Collector):
            child_report = child.ihook.pytest_make_collect_report(collector=child)
            if child_report.failed:
                errors.append(child_report)
    for error in errors[:-1]:
        collector.ihook.pytest_collectreport(report=error)
    return errors[-1]


def _collection_error(collector: pytest.Collector, message: str) -> pytest.CollectReport:
    # pytest's own representation of a pytest.fail() during collection, so a
    # bad marker reads like any other collection error ("ERROR x.py - Failed: ...").
    call = pytest.CallInfo.from_call(lambda: pytest.fail(message, pytrace=False), when="collect")
    assert call.excinfo is not None
    return pytest.CollectReport(collector.nodeid, "failed", collector.repr_failure(call.excinfo), [])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Items that are not Python functions (doctests, other plugins' items).
    for item in items:
        if SPEC_KEY not in item.stash and _is_isolated(item):
            try:
                item.stash[SPEC_KEY] = _resolve(item)
            except SpecError as error:
                item.stash[SPEC_KEY] = error


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    if forwarding.inside_container or SPEC_KEY not in item.stash:
        return None  # not isolated, or already inside the container
    from pytest_isolate import rerun
    from pytest_isolate.protocol import report_setup_error, run_isolated

    if rerun.drives(item):
        return None  # its loop calls _isolated_attempt once per attempt
    spec = _spec_to_run(item)
    if isinstance(spec, str):
        report_setup_error(item, spec)
        return True
    run_isolated(_runtime(item.config), item, nextitem, spec)
    return True


def _spec_to_run(item: pytest.Item) -> IsolationSpec | str:
    """The item's spec after the modify hook, or the error message to report."""
    spec = item.stash[SPEC_KEY]
    if isinstance(spec, SpecError):
        return str(spec)
    modified = item.config.hook.pytest_isolate_modify_spec(item=item, spec=spec)
    if modified is not None and not isinstance(modified, IsolationSpec):
        return f"pytest_isolate_modify_spec returned {modified!r} for {item.nodeid}; expected an IsolationSpec or None"
    return repeat.under_pressure(item, modified or spec)


def _isolated_attempt(item: pytest.Item, nextitem: pytest.Item | None, log: bool) -> list[pytest.TestReport] | None:
    """One attempt of an isolated item for pytest-rerunfailures (None: not ours)."""
    if SPEC_KEY not in item.stash or forwarding.inside_container:
        return None
    from pytest_isolate.protocol import isolated_runtestprotocol, setup_error_reports

    spec = _spec_to_run(item)
    if isinstance(spec, str):
        return setup_error_reports(item, spec, log)
    return isolated_runtestprotocol(_runtime(item.config), item, nextitem, spec, log=log)


def _runtime(config: pytest.Config) -> Runtime:
    if RUNTIME_KEY not in config.stash:
        from pytest_isolate.runtime import Runtime

        runtime = Runtime(config, config.stash[SETTINGS_KEY])
        config.stash[RUNTIME_KEY] = runtime
        if runtime.cleaned:
            reporter = config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(
                    f"pytest-isolate: removed {len(runtime.cleaned)} cgroup(s) left by dead runs"
                )
    return config.stash[RUNTIME_KEY]


def pytest_sessionfinish(session: pytest.Session) -> None:
    runtime = session.config.stash.get(RUNTIME_KEY, None)
    if runtime is not None:
        runtime.close()
        del session.config.stash[RUNTIME_KEY]
