"""Session-wide container machinery, and running one container.

Made when the first isolated test runs (so a session without isolated tests
pays nothing), closed at the end of the session.  What can be done once -
reading the host's mount table, finding the cgroup hierarchy, removing a
dead run's leftovers - is done here once.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import gc
import os
import resource
import select
import signal
import sys
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from pytest_isolate import coverage_bridge, engines
from pytest_isolate.channel import ChannelReader, ChannelWriter
from pytest_isolate.container import credentials, fsdiff, libc, netsetup, rootfs, storage
from pytest_isolate.container.cgroups import CgroupBackend, TestCgroup, Usage, detect_backend
from pytest_isolate.container.confinement import USERNS_ROUTE, Confinement, explain
from pytest_isolate.container.confinement import probe as probe_confinement
from pytest_isolate.container.hardening import Hardening
from pytest_isolate.container.launcher import (
    ContainerJob,
    run_prepared_test_process,
    run_rootless_launcher,
    run_test_process,
)
from pytest_isolate.container.lifecycle import ContainerProcesses, Graveyard, kill
from pytest_isolate.container.mountinfo import read_mounts
from pytest_isolate.container.mountplan import (
    MountOp,
    MountPlan,
    device_ops,
    host_mount_ops,
    image_ops,
    rootless_host_ops,
    with_overlays_only,
)
from pytest_isolate.container.netsetup import ContainerNetwork
from pytest_isolate.container.network import hosts_file
from pytest_isolate.container.prepared import PreparedPidNamespace
from pytest_isolate.container.prepared import prepare as prepare_pid_namespace
from pytest_isolate.container.prepared import take as take_prepared
from pytest_isolate.container.preparer import Blueprint, Preparer
from pytest_isolate.environment import EnvironmentPlanner
from pytest_isolate.errors import ContainerError
from pytest_isolate.forwarding import ReportRouting
from pytest_isolate.messages import Done, Parser, ProtocolViolation, Ready
from pytest_isolate.outcome import START_LIMIT_SECONDS, ContainerResult
from pytest_isolate.output import CaptureFiles, CapturePlan
from pytest_isolate.spec import IsolationSpec

if TYPE_CHECKING:
    import pytest

    from pytest_isolate.settings import Settings


# After a timeout kill, how long to wait for the pipe to close before giving up.
KILL_GRACE_SECONDS = 10.0


class Runtime:
    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.net_range = str(config.getini("isolate_net_range"))
        # --isolate-diff or isolate_diff_fail: containers keep their layers open for reading.
        self.diff_wanted = settings.diff or bool(settings.diff_fail)
        # --isolate-keep: the layers are held open too, and copied at "done".
        self.keep_mode = settings.keep
        self.keep_run_dir: str | None = None
        if self.keep_mode != "none":
            from pytest_isolate import keep

            self.keep_run_dir = keep.run_dir_for(config)
        # What the kernel lets us do, probed once (see container.confinement).
        # Not root, or root that may not build containers with its own
        # CAP_SYS_ADMIN (a CI job's container): containers in a user
        # namespace of our own, as rootless ones are.
        self.confinement = probe_confinement()
        self.rootless = os.geteuid() != 0 or self.confinement.route == USERNS_ROUTE
        self.userns_problem = None if not self.rootless else _userns_problem(self.confinement)
        self.cgroups: CgroupBackend | None = detect_backend()
        self._cgroups_writable: bool | None = None
        self._confined_advice_given = False
        self.limits_fallback = str(config.getini("isolate_limits_fallback")).strip()
        self.host_ops: list[MountOp] = (rootless_host_ops if self.rootless else host_mount_ops)(read_mounts())
        self.test_oom_score = _read_text("/proc/self/oom_score_adj", "0").strip()
        self.cleaned: list[str] = []
        self.routing = ReportRouting(config)
        self.graveyard = Graveyard()
        self._images: dict[str, list[str]] = {}
        self._image_roots: dict[str, list[MountOp]] = {}
        self._userns_host_ops: list[MountOp] | None = None
        self._storage: str | None = None
        self.hardening = Hardening.for_this_host()
        self.capture_plan = CapturePlan.for_session(config)
        # Where the test's saved stdin and pytest's --log-file lead in the container.
        self.null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        # Issue 10: the host's credential files and environment, planned once.
        self.secrets = credentials.existing_secrets()
        self._secret_masks: dict[str, list[MountOp]] = {}
        self._common: dict[tuple[int, bool], list[MountOp]] = {}
        self._hosts: tuple[str, MountOp] | None = None  # the last hostname's
        self.environment = EnvironmentPlanner()
        # The PID namespace children go back to after each container.
        self.own_pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self._prepared: PreparedPidNamespace | None = None
        # As root, whole containers built ahead (see container.preparer).
        self.preparer = Preparer() if bool(config.getini("isolate_prepare")) and not self.rootless else None
        if self.preparer is not None:
            self.preparer.start()
        self._last_blueprint: Blueprint | None = None
        self.stage = rootfs.ensure_stage_dir()
        if self.cgroups is not None and os.geteuid() == 0 and self.cgroups_writable():
            self.cleaned = self.cgroups.remove_stale_groups()
        # Descriptors the test process must not keep: a way back to pytest's
        # PID namespace, and (under xdist) the pipes to the controller, whose
        # protocol imports and calls what it is sent.
        self.foreign_fds: tuple[int, ...] = (self.own_pid_namespace,)
        if hasattr(config, "workerinput"):
            self.foreign_fds += _fds_shared_with(os.getppid())
            _die_with_xdist_controller()

    def close(self) -> None:
        if self._prepared is not None:
            self._prepared.discard()
            self._prepared = None
        if self.preparer is not None:
            self.preparer.close()
        self.graveyard.sweep(block=True)
        if netsetup.created:
            from pytest_isolate.container.hostlink import wait_for_links_gone

            wait_for_links_gone(netsetup.created)
            netsetup.created.clear()
        for fd in (self.own_pid_namespace, self.null_fd):
            try:
                os.close(fd)
            except OSError:
                pass  # already closed (a nested run of pytest inside a container shares our objects)
        if self.cgroups is not None:
            self.cgroups.remove_session_group()

    def in_user_namespace(self, spec: IsolationSpec) -> bool:
        return self.rootless or spec.user

    def plan_for(self, item: pytest.Item, spec: IsolationSpec) -> MountPlan:
        userns = self.in_user_namespace(spec)
        if spec.rootfs != "host":
            root = self._image_root(spec.rootfs)
        elif userns and not self.rootless:  # user=True as root: the host root as rootless sees it
            if self._userns_host_ops is None:
                self._userns_host_ops = rootless_host_ops(read_mounts())
            root = self._userns_host_ops
        else:
            root = self.host_ops
        if "SYS_ADMIN" in spec.caps:
            root = with_overlays_only(root)
        plan = MountPlan(root + self._common_ops(spec.disk, mknod=not userns))
        if spec.net.own_namespace:
            plan.ops.append(self._hosts_op(spec.hostname))
        if not spec.secrets:
            plan.ops += self.secret_masks(spec.rootfs, root)
        item.config.hook.pytest_isolate_mount_plan(item=item, spec=spec, plan=plan)
        return plan

    # The ops every plan shares are made once, so that consecutive tests'
    # plans hold the very same objects: the preparer's blueprints then
    # compare equal by identity, op for op, on every test.
    def _common_ops(self, disk: int, *, mknod: bool) -> list[MountOp]:
        key = (disk, mknod)
        if key not in self._common:
            self._common[key] = [*device_ops(shm_size=disk, nodes_by_mknod=mknod), MountOp("sysfs", "/sys", readonly=True)]
        return self._common[key]

    def _hosts_op(self, hostname: str) -> MountOp:
        if self._hosts is None or self._hosts[0] != hostname:  # the last test's, nearly always
            self._hosts = (hostname, MountOp("file", "/etc/hosts", source=hosts_file(hostname)))
        return self._hosts[1]

    def secret_masks(self, rootfs_name: str, root: list[MountOp]) -> list[MountOp]:
        """The masks over the host's credential files that this root shows (once per root)."""
        if rootfs_name not in self._secret_masks:
            # An image shows only the host paths overlaid on it (the interpreter, the project).
            visible = None if rootfs_name == "host" else [op.target for op in root if op.target != "/"]
            self._secret_masks[rootfs_name] = credentials.mask_ops(self.secrets, visible)
        return self._secret_masks[rootfs_name]

    def storage_driver(self) -> str:
        """isolate_storage, resolved once (auto: overlay, then fuse-overlayfs, then copy)."""
        if self._storage is None:
            self._storage = storage.choose(str(self.config.getini("isolate_storage")), rootless=self.rootless)
        return self._storage

    def userns_stage(self) -> str:
        """user=True as root: a stage directory nobody may reach (the root one is root's only)."""
        path = rootfs.STAGE_DIR + "-userns"
        os.makedirs(path, mode=0o755, exist_ok=True)
        return path

    def image_layers(self, name: str) -> list[str]:
        """An image's layers, topmost first; built (once, under a lock) if not cached."""
        if name not in self._images:
            from pytest_isolate.images import ImageError, resolve_layers

            extra = [str(path) for path in self.config.getini("isolate_images")]
            cache = str(self.config.getini("isolate_cache")).strip() or None
            try:
                self._images[name] = resolve_layers(name, extra, cache_dir=cache, progress=self._progress)
            except ImageError as error:
                raise ContainerError("prepare the root filesystem image", str(error)) from None
        return self._images[name]

    def _progress(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"pytest-isolate: {line}")

    def _image_root(self, name: str) -> list[MountOp]:
        """An image's root ops, worked out once per session (they scan sys.path)."""
        if name not in self._image_roots:
            self._image_roots[name] = image_ops(self.image_layers(name), self._python_paths())
        return self._image_roots[name]

    def _python_paths(self) -> list[str]:
        """What the forked test's Python reads, kept at its host path in an image."""
        paths = {sys.base_prefix, sys.prefix, sys.exec_prefix, str(self.config.rootpath), os.getcwd()}
        paths.update(entry for entry in sys.path if entry and os.path.isdir(entry))
        return sorted(paths)

    def check_host(self, spec: IsolationSpec) -> str | None:
        """Refuse early, with the fix, what this host cannot do.

        Returns how the test's limits are enforced: "cgroup", "rlimit"
        (rootless, with isolate_limits_fallback = rlimit) or None (no limits).
        """
        if os.geteuid() == 0 and self.confinement.route is None:
            raise self._confined("create the container", self._no_route_reason())
        if self.userns_problem is not None:
            from pytest_isolate.container import apparmor_userns

            restriction = apparmor_userns.diagnose(self.confinement.userns_route)  # Ubuntu 23.10+: its own remedies
            if restriction is not None:
                raise restriction.error()
            raise ContainerError(
                "create the container",
                f"pytest runs as uid {os.geteuid()}, and this host does not let it build a container "
                f"in a user namespace: {self.userns_problem}",
                "run pytest as root, or allow user namespaces (sysctl user.max_user_namespaces=15000; "
                "on Ubuntu also kernel.apparmor_restrict_unprivileged_userns=0)",
            )
        if os.geteuid() == 0 and spec.net.mode == "private" and not self.confinement.has("NET_ADMIN"):
            raise self._confined(
                "create the container's private network link",
                f"pytest runs as root without CAP_NET_ADMIN{self._where()}, and a veth link to the host needs it",
            )
        if os.geteuid() == 0 and spec.net.mode == "private" and self.confinement.proc_sys_read_only and _forwarding_on():
            raise self._confined(
                "create the container's private network link",
                f"/proc/sys is mounted read-only{self._where()}, and forwarding, which is on here, "
                "must be switched off on the host's end of a veth link",
            )
        if os.geteuid() != 0 and spec.net.mode == "private":
            raise ContainerError(
                "create the container's private network link",
                f"pytest runs as uid {os.geteuid()}, and a veth link to the host needs root "
                "(CAP_NET_ADMIN in the host's network namespace)",
                'run pytest as root, or reach a host service with net=["127.0.0.1:PORT"]',
            )
        if spec.net.endpoints:
            from pytest_isolate.container import forward_targets

            forward_targets.targets(spec.net.endpoints)  # a name must resolve to loopback (cached for the session)
        if not spec.has_limits:
            return None
        if self.cgroups is None:
            raise ContainerError(
                "set the test's limits",
                "no usable cgroup hierarchy with the memory controller was found "
                "(neither cgroup v1 nor v2)",
                "mount cgroup2 at /sys/fs/cgroup with the memory, cpu and pids controllers, "
                "or drop mem=, cpu= and pids=",
            )
        if self.cgroups_writable():
            return "cgroup"
        if self.limits_fallback == "rlimit":
            return "rlimit"
        if os.geteuid() == 0:
            mount = "is mounted read-only" if self.confinement.cgroup_read_only else "may not be written"
            raise self._confined(
                "set the test's limits",
                f"the cgroup filesystem {mount}{self._where()} (cgroup v{self.cgroups.version}), "
                "and mem=, cpu= and pids= need a test cgroup",
                also="; or set isolate_limits_fallback = rlimit for weaker limits (RLIMIT_AS, RLIMIT_NPROC)",
            )
        advice = (
            "run pytest in a cgroup delegated to you: systemd-run --user --scope -p Delegate=yes pytest ..."
            if self.cgroups.version == 2
            else "cgroup v1 cannot be delegated to a user: run pytest as root"
        )
        raise ContainerError(
            "set the test's limits",
            f"pytest runs as uid {os.geteuid()} and may not create cgroups here (cgroup v{self.cgroups.version})",
            f"{advice}; or set isolate_limits_fallback = rlimit for weaker limits (RLIMIT_AS, RLIMIT_NPROC)",
        )

    def cgroups_writable(self) -> bool:
        """Whether we may make test cgroups: root where the tree is writable, a user in a delegated v2 cgroup."""
        if self._cgroups_writable is None:
            self._cgroups_writable = False
            if self.cgroups is not None and os.geteuid() == 0:
                # Root has CAP_DAC_OVERRIDE; a read-only mount (a default CI container) says EROFS.
                self._cgroups_writable = all(os.access(path, os.W_OK) for path in self.cgroups.directories())
            elif self.cgroups is not None and self.cgroups.version == 2:
                try:
                    self.cgroups.create(IsolationSpec()).remove()
                    self._cgroups_writable = True
                except (ContainerError, OSError):
                    pass
        return self._cgroups_writable

    def launch(self, item: pytest.Item, spec: IsolationSpec, plan: MountPlan, *, rlimits: bool = False) -> ContainerResult:
        """Run the item in a fresh container and return what happened.

        When this returns, the container's processes are dead or dying (a
        SIGKILL of its whole PID namespace is under way); ``close`` waits
        for the last of them.
        """
        self.graveyard.sweep(block=False)
        cgroup = self._cgroup_for(spec)
        result = ContainerResult(limits_by="rlimit" if rlimits else ("cgroup" if cgroup else None))
        processes = ContainerProcesses()
        net = ContainerNetwork(spec, self.net_range)
        capture = CaptureFiles(self.capture_plan, self.null_fd)
        report_read, report_write = os.pipe()
        userns = self.in_user_namespace(spec)
        keep_layers = self.diff_wanted or self.keep_run_dir is not None
        blueprint = self._blueprint(spec, plan, keep_layers=keep_layers)
        prepared = None
        if userns:  # the launcher spawns init, in the user namespace it makes
            init_read, processes.init_write = os.pipe()
        else:  # made while the last test ran (see container.prepared, container.preparer)
            prepared = self._take_prepared(blueprint)
            init_read, processes.init_write, processes.init_pid = -1, prepared.init_write, prepared.init_pid
            processes.init_is_ours = prepared.init_is_ours
        # The launcher's word on the test's exit, on a pipe the test never holds.
        status_read, status_write = os.pipe() if userns else (-1, -1)
        # user=True as root: pytest writes the launcher's user map, in a handshake.
        mapping = (os.pipe(), os.pipe()) if userns and not self.rootless else None
        channel = ChannelWriter(report_write)
        job = ContainerJob(
            run_test=_pytest_protocol(item, self.routing, channel),
            spec=spec,
            plan=plan,
            cgroup=cgroup,
            channel=channel,
            net=net,
            pytest_pid=os.getpid(),
            init_pipe_read=init_read,
            init_pipe_write=processes.init_write,
            close_fds=(*self.foreign_fds, report_read, *_netlink_fds(), *((mapping[0][0], mapping[1][1]) if mapping else ())),
            capture=capture,
            test_oom_score=self.test_oom_score,
            hardening=self.hardening,
            stage=self.stage if self.rootless or not userns else self.userns_stage(),
            keep_layers=keep_layers,
            rootless=userns,
            rlimits=rlimits_for(spec) if rlimits else (),
            user_sync=(mapping[0][1], mapping[1][0]) if mapping else None,
            storage=self.storage_driver(),
            status_fd=status_write,
            inherit_fds=spec.inherit_fds,
            environment=self.environment.plan(spec.env),
            joined=prepared.joined if prepared is not None else (),
        )
        started = time.monotonic()
        finished_cleanly = False
        try:
            if userns:
                processes.test_pid = _fork(run_rootless_launcher, job)
                processes.init_is_ours = False
                if mapping:
                    _map_user(processes.test_pid, mapping)
                    mapping = None
            else:
                assert prepared is not None
                self._start_in_new_pid_namespace(job, processes, prepared, blueprint)
            os.close(report_write)
            report_write = -1
            if status_write >= 0:
                os.close(status_write)
                status_write = -1
            net.after_fork(processes.test_pid)
            parser = Parser(item.nodeid)
            keep_to = None
            if self.keep_run_dir is not None:
                from pytest_isolate import keep

                keep_to = keep.test_dir(self.keep_run_dir, item.nodeid)
            finished_cleanly = self._watch(
                result, processes, report_read, parser, spec.timeout, cgroup, started, plan, keep_to
            )
        finally:
            for fd in (report_write, init_read, report_read, status_write, *(fd for pair in mapping or () for fd in pair)):
                if fd >= 0:
                    os.close(fd)
            if prepared is not None:
                prepared.close_namespace_fd()  # already closed, unless the fork never happened
            if not finished_cleanly:  # what a crashed test wrote and never reported
                result.leftover_output = capture.leftover()
            capture.close()
            result.wall_seconds = time.monotonic() - started
            net.close()
            if finished_cleanly:
                result.usage = cgroup.usage() if cgroup is not None else None
                self.graveyard.retire(processes, cgroup)
            else:
                processes.stop()
                if cgroup is not None:
                    cgroup.kill_all()
                    result.usage = cgroup.usage()
                    cgroup.remove()
            result.usage = _with_cpu_time(result.usage, result.reported_cpu_seconds or processes.test_cpu_seconds)
            if cgroup is None:
                result.usage_by = "rusage"
                if result.reported_peak_rss is not None and result.usage is not None and result.usage.peak_memory is None:
                    result.usage = dataclasses.replace(result.usage, peak_memory=result.reported_peak_rss)
            if status_read >= 0:
                # Rootless: the launcher (our test_pid) has exited, or was killed.
                result.status = _read_status(status_read) if not finished_cleanly else None
                os.close(status_read)
        if result.status is None:
            result.status = processes.test_status
        return result

    def _cgroup_for(self, spec: IsolationSpec) -> TestCgroup | None:
        # No limit asked, or rootless without a delegated cgroup: no cgroup at
        # all (so a read-only cgroup tree stops nothing); rusage measures.
        if self.cgroups is None or not spec.has_limits or (self.rootless and not self.cgroups_writable()):
            return None
        return self.cgroups.create(spec)

    # ------------------------------------------------ inside a CI container

    def _where(self) -> str:
        engine = engines.detect()[0]
        return f" in this {engine} container" if engine != engines.UNKNOWN else ""

    def _no_route_reason(self) -> str:
        found = self.confinement
        missing = [name for name in ("SYS_ADMIN", "NET_ADMIN") if not found.has(name)]
        who = "root" + (f" without {' and '.join('CAP_' + name for name in missing)}" if missing else "")
        return (
            f"pytest runs as {who}{self._where()}, and the kernel refused both ways to build one: "
            f"as root, {explain(found.root_route, found)}; in a user namespace, {explain(found.userns_route, found)}"
        )

    def _confined(self, stage: str, reason: str, also: str = "") -> ContainerError:
        """A refusal whose advice is the whole set of flags: given in full once, then pointed to."""
        if self._confined_advice_given:
            return ContainerError(stage, reason, "the flags that fix it: the first such error above, or `pytest-isolate info`")
        self._confined_advice_given = True
        writable = self.cgroups is not None and self.cgroups_writable()
        advice = engines.advice(self.confinement, engines.detect()[0], writable)
        return ContainerError(stage, reason, (advice or "see `pytest-isolate info`") + also)

    def _blueprint(self, spec: IsolationSpec, plan: MountPlan, *, keep_layers: bool) -> Blueprint | None:
        """What the preparer would build this container from; None: the test process builds it.

        The preparer builds what needs nothing of the test's own process:
        not a user namespace, a veth link or forwarded listeners (pytest's
        handshakes with the test), held-open layers (--isolate-diff), or a
        FUSE daemon or copied root, whose memory belongs in the test's cgroup.
        """
        if (
            self.preparer is None
            or self.preparer.disabled
            or self.in_user_namespace(spec)
            or keep_layers
            or spec.net.mode not in ("none", "host")
            or spec.net_rate is not None
            or self.storage_driver() != "overlay"
        ):
            return None
        hardening = self.hardening
        return Blueprint(
            ops=tuple(plan.ops),
            stage=self.stage,
            disk=spec.disk,
            hostname=spec.hostname,
            own_network=spec.net.own_namespace,
            masked_files=hardening.masked_files,
            masked_directories=hardening.masked_directories,
            read_only=hardening.read_only,
        )

    def _take_prepared(self, blueprint: Blueprint | None) -> PreparedPidNamespace:
        """The container built ahead for this blueprint, else the PID namespace made ahead."""
        prepared = self.preparer.take(blueprint) if self.preparer is not None else None
        if prepared is None:
            prepared, self._prepared = self._prepared, None
        if prepared is None:  # the first container, or the last preparation failed or did not fit
            prepared = prepare_pid_namespace(self.own_pid_namespace)
        take_prepared(prepared)
        return prepared

    def _start_in_new_pid_namespace(
        self, job: ContainerJob, processes: ContainerProcesses, prepared: PreparedPidNamespace, blueprint: Blueprint | None
    ) -> None:
        """As root: the test process, forked straight into a PID namespace where init already runs."""
        libc.setns(prepared.namespace_fd, libc.CLONE_NEWPID)
        try:
            processes.test_pid = _fork(run_prepared_test_process if prepared.joined else run_test_process, job)
        finally:
            # Later children of this thread (subprocesses a fixture starts)
            # must stay in pytest's own PID namespace.
            libc.setns(self.own_pid_namespace, libc.CLONE_NEWPID)
            prepared.close_namespace_fd()
        # The next container, while this test runs: the whole of it, built
        # to this test's blueprint once two tests in a row had it (the next
        # test's, nearly always; a hook that makes each test's plan its own
        # would have every one built in vain), or its PID namespace and init.
        repeated, self._last_blueprint = blueprint is not None and blueprint == self._last_blueprint, blueprint
        if repeated and self.preparer is not None and not self.preparer.disabled:
            assert blueprint is not None
            self.preparer.request(blueprint)
            if not self.preparer.disabled:
                return
        if self._prepared is None:
            try:
                self._prepared = prepare_pid_namespace(self.own_pid_namespace)
            except OSError:
                self._prepared = None  # the next launch tries again, and reports what fails

    @staticmethod
    def _watch(
        result: ContainerResult,
        processes: ContainerProcesses,
        report_fd: int,
        parser: Parser,
        timeout: float | None,
        cgroup: TestCgroup | None,
        started: float,
        plan: MountPlan,
        keep_to: str | None = None,
    ) -> bool:
        """Read messages until the test says "done" (True) or its processes are gone (False).

        A message outside the protocol ends the container at once: the test
        fails with the reason (``result.violation``), and nothing else does.
        """
        reader = ChannelReader()
        test_exited = os.pidfd_open(processes.test_pid)
        poller = select.poll()
        poller.register(report_fd, select.POLLIN)
        poller.register(test_exited, select.POLLIN)
        # Until "ready" the container is starting: its own bound. From
        # "ready" on the test's code runs: timeout= applies, from then.
        deadline: float | None = started + START_LIMIT_SECONDS
        killed = False
        pipe_open = test_running = True

        def kill_container() -> None:
            kill(processes.test_pid)
            if cgroup is not None:
                cgroup.kill_all()

        try:
            while pipe_open or test_running:
                wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
                events = dict(poller.poll(wait_ms))
                if not events:
                    if killed:
                        raise ContainerError(
                            "stop the container",
                            f"its processes were still alive {KILL_GRACE_SECONDS:g}s after SIGKILL",
                        )
                    if result.ready is None:
                        result.start_timed_out = True
                    else:
                        result.timed_out = True
                    killed = True
                    kill_container()
                    deadline = time.monotonic() + KILL_GRACE_SECONDS
                    continue
                if report_fd in events:
                    data = os.read(report_fd, 1 << 16)
                    try:
                        for raw in reader.feed(data):
                            message = parser.parse(raw)
                            if isinstance(message, Done):
                                if killed:
                                    continue
                                result.reported_cpu_seconds = message.cpu_seconds
                                result.reported_peak_rss = message.peak_rss
                                if result.ready is not None and result.ready.stage_fd is not None:
                                    _read_layers(result, processes.test_pid, result.ready, plan, deadline, keep_to)
                                return True
                            starting = result.ready is None
                            result.add(message)
                            if starting and result.ready is not None and not killed:
                                deadline = None if timeout is None else time.monotonic() + timeout
                    except ProtocolViolation as violation:
                        result.violation = violation.reason
                        kill_container()
                        processes.end_namespace()
                        return False
                    if not data:
                        pipe_open = False
                        poller.unregister(report_fd)
                if test_exited in events:
                    test_running = False
                    poller.unregister(test_exited)
                    processes.reap_test()
                    # The test's daemons may still hold the report pipe:
                    # ending init kills them, and the pipe closes.
                    processes.end_namespace()
            return False
        finally:
            os.close(test_exited)


def _read_layers(
    result: ContainerResult, pid: int, ready: Ready, plan: MountPlan, deadline: float | None, keep_to: str | None
) -> None:
    """--isolate-diff and --isolate-keep: the test's writable layers, through the descriptor the machinery reported.

    The test may have put anything at that descriptor number since: it is
    read only if it still is the tmpfs the machinery made (device and inode
    from "ready", sent before the test's code ran).
    """
    assert ready.stage_fd is not None
    try:
        stage = os.open(f"/proc/{pid}/fd/{ready.stage_fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        result.changes, result.changes_note = [], fsdiff.NOT_READ
        return
    try:
        found = os.fstat(stage)
        if (found.st_dev, found.st_ino) != ready.stage_id:
            result.changes, result.changes_note = [], fsdiff.NOT_READ
            return
        result.changes, result.changes_note = fsdiff.read_changes(stage, plan, deadline=deadline)
        if keep_to is not None:  # --isolate-keep, while the layers still exist
            from pytest_isolate import keep

            keep.copy_layers(f"/proc/self/fd/{stage}", plan, keep_to)  # our own, checked descriptor
            result.kept = keep_to
    finally:
        os.close(stage)


def _read_status(fd: int) -> int | None:
    """The rootless launcher's report of the test's wait status, if it made one."""
    os.set_blocking(fd, False)
    try:
        text = os.read(fd, 32)
    except OSError:
        return None
    return int(text) if text.strip().isdigit() else None


def rlimits_for(spec: IsolationSpec) -> tuple[tuple[int, int], ...]:
    """The rlimit fallback: weaker than cgroups, and said so in the report."""
    limits = []
    if spec.mem is not None:
        limits.append((resource.RLIMIT_AS, spec.mem))  # address space, not resident memory
    if spec.pids is not None:
        limits.append((resource.RLIMIT_NPROC, spec.pids))  # counted per user, in the user namespace
    return tuple(limits)


def _map_user(pid: int, mapping: tuple[tuple[int, int], tuple[int, int]]) -> None:
    """Wait for the launcher's user namespace, map its root to nobody, let it go on."""
    from pytest_isolate.container.userns import map_root_to_nobody

    (ready_read, ready_write), (go_read, go_write) = mapping
    os.close(ready_write)
    os.close(go_read)
    try:
        if os.read(ready_read, 1) == b"u":
            map_root_to_nobody(pid)
            os.write(go_write, b"g")
    finally:
        os.close(ready_read)
        os.close(go_write)


def _netlink_fds() -> tuple[int, ...]:
    from pytest_isolate.container.hostlink import netlink_fd

    fd = netlink_fd()
    return () if fd is None else (fd,)


def _forwarding_on() -> bool:
    """New links copy conf/default/forwarding: on, and a test could route through this host."""
    return _read_text("/proc/sys/net/ipv4/conf/default/forwarding", "1").strip() != "0"


def _userns_problem(found: Confinement) -> str | None:
    return None if found.userns_route.works else explain(found.userns_route, found)


def _pytest_protocol(item: pytest.Item, routing: ReportRouting, channel: ChannelWriter) -> Callable[[], None]:
    """What the container runs once it is built: pytest's protocol, reported on the channel."""

    def run_test() -> None:
        routing.apply(channel)
        item.ihook.pytest_runtest_protocol(item=item, nextitem=item.parent)
        measured = coverage_bridge.collect()
        if measured is not None:
            channel.send("coverage", **measured)

    return run_test


def _fork(body: Callable[[ContainerJob], NoReturn], job: ContainerJob) -> int:
    """Fork; the child runs ``body(job)`` and never returns."""
    pid = -1
    # pytest's faulthandler_timeout arms a watchdog thread around the test;
    # a child forked while it is armed hangs for good when its own pytest
    # re-arms it (the watchdog's lock is held by a thread it does not have).
    # The child arms its own, which then reports the test's stack.
    faulthandler.cancel_dump_traceback_later()
    with warnings.catch_warnings():
        # Python 3.12 warns about fork() in a process with threads (pytest-
        # xdist's execnet has one); the child touches none of their locks,
        # and filterwarnings=error must not turn the warning into an
        # exception *after* the child exists.
        warnings.simplefilter("ignore", DeprecationWarning)
        # The child's garbage collector must not walk pytest's objects: each
        # one it touches is a page copied (a big suite's heap is hundreds of
        # MB), and charged to the test's memory.  Frozen, they are out of its
        # reach; pytest unfreezes its own at once.
        gc.freeze()
        if not job.inherit_fds:
            job.pytest_fds = libc.open_descriptors()  # the last thing before the fork: see libc.blank_all_except
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                gc.unfreeze()
    if pid == 0:
        try:
            body(job)
        finally:
            # Whatever happens in the child, it never returns into pytest.
            os._exit(1)
    return pid


def _with_cpu_time(usage: Usage | None, cpu_seconds: float | None) -> Usage | None:
    """Fill in CPU time where no cpuacct cgroup measured it."""
    if cpu_seconds is None or (usage is not None and usage.cpu_seconds is not None):
        return usage
    return dataclasses.replace(usage or Usage(), cpu_seconds=cpu_seconds)


def _fds_shared_with(pid: int) -> tuple[int, ...]:
    """Our pipes and sockets whose other end is open in process ``pid``."""
    def links(process: str) -> dict[str, int]:
        found: dict[str, int] = {}
        try:
            names = os.listdir(f"/proc/{process}/fd")
        except OSError:
            return found
        for name in names:
            try:
                target = os.readlink(f"/proc/{process}/fd/{name}")
            except OSError:
                continue
            if target.startswith(("pipe:", "socket:")):
                found[target] = int(name)
        return found

    theirs = links(str(pid))
    return tuple(fd for target, fd in links("self").items() if target in theirs)


def _die_with_xdist_controller() -> None:
    """An xdist worker holds containers open: it must not outlive its controller.

    Killing the controller (even with SIGKILL) then kills the worker, whose
    death kills its test process (parent-death signal) and ends init (its
    pipe closes): every container of the run is gone within moments.
    """
    controller = os.getppid()
    libc.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != controller:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def _read_text(path: str, default: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read()
    except OSError:
        return default
