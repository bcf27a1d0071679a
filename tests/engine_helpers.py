"""Helpers for tests/test_ci_containers.py: a CI job's container, run by podman or docker.

The image is Debian bookworm with python3 and python3-venv, made by
mmdebstrap once and cached as a tarball; the test dependencies are
installed into a venv layer once per engine (from wheels fetched once);
only the plugin's own wheel is built per session and installed in each
container (about a second).  Containers run with ``--network none``.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid

CACHE = os.path.join(os.environ.get("PYTEST_ISOLATE_CACHE") or "/var/cache/pytest-isolate", "engine-lane")
DEPENDENCIES = ("pytest>=8", "pluggy>=1.2", "pyroute2>=0.7", "filelock>=3.12")
LABEL = "pytest-isolate-lane"

# crun refuses a hybrid cgroup layout ("cgroups in hybrid mode not
# supported"), runc works; root without CAP_SYS_RESOURCE may not raise the
# ulimits podman sets by default.
PODMAN_CONF = """\
[containers]
default_ulimits = []
[engine]
runtime = "runc"
"""


@dataclasses.dataclass(frozen=True)
class Engine:
    name: str
    env: dict[str, str]

    def command(self, *args: str) -> list[str]:
        return [self.name, *args]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args), env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def containers_of_the_lane(self) -> list[str]:
        listed = self.run("ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}")
        return listed.stdout.split()


def engine(name: str) -> Engine:
    env = dict(os.environ)
    if name == "podman":
        os.makedirs(CACHE, exist_ok=True)
        conf = os.path.join(CACHE, "containers.conf")
        if not os.path.exists(conf):
            _write_atomically(conf, PODMAN_CONF.encode())
        env["CONTAINERS_CONF"] = conf
    return Engine(name, env)


def usable(name: str) -> bool:
    """The engine is installed, its daemon (docker) answers, and an image can be made here."""
    if shutil.which(name) is None:
        return False
    if not (shutil.which("mmdebstrap") or os.path.exists(os.path.join(CACHE, "bookworm-python3.tar"))):
        return False
    try:
        answer = engine(name).run("info", "--format", "{{.Host.Kernel}}" if name == "podman" else "{{.KernelVersion}}", timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return answer.returncode == 0


def _write_atomically(path: str, data: bytes) -> None:
    temporary = f"{path}.{uuid.uuid4().hex}"
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def base_tarball() -> str:
    """Debian bookworm (minbase) with python3 and python3-venv, built once."""
    from filelock import FileLock

    os.makedirs(CACHE, exist_ok=True)
    tarball = os.path.join(CACHE, "bookworm-python3.tar")
    with FileLock(tarball + ".lock"):
        if not os.path.exists(tarball):
            partial = f"{tarball}.{uuid.uuid4().hex}.tar"
            subprocess.run(
                ["mmdebstrap", "--quiet", "--variant=minbase", "--include=python3,python3-venv", "bookworm", partial],
                check=True,
                capture_output=True,
                timeout=900,
            )
            os.replace(partial, tarball)
    return tarball


def dependency_wheels() -> str:
    """The test dependencies as wheels, fetched once (pure Python: any 3.x interpreter installs them)."""
    from filelock import FileLock

    wheels = os.path.join(CACHE, "wheels")
    with FileLock(wheels + ".lock"):
        if not glob.glob(os.path.join(wheels, "pytest-*.whl")):
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "-q", "-w", wheels, *DEPENDENCIES],
                check=True,
                capture_output=True,
                timeout=600,
            )
    return wheels


def plugin_wheel(source: str, into: str) -> str:
    """This checkout's plugin as a wheel (built per session: the code under test)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", into, source],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = glob.glob(os.path.join(into, "pytest_isolate-*.whl"))
    return wheel


def image(runner: Engine) -> str:
    """The lane's image in ``runner``'s store: the base with a venv of the dependencies (made once)."""
    from filelock import FileLock

    tarball = base_tarball()
    wheels = dependency_wheels()
    key = hashlib.sha256()
    stat = os.stat(tarball)
    key.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    for wheel in sorted(os.listdir(wheels)):
        key.update(wheel.encode())
    tag = f"localhost/pytest-isolate-lane:{key.hexdigest()[:16]}"
    with FileLock(os.path.join(CACHE, f"{runner.name}-image.lock")):
        if runner.run("image", "inspect", tag).returncode == 0:
            return tag
        base = f"{tag}-base"
        imported = runner.run("import", tarball, base, timeout=600)
        assert imported.returncode == 0, imported.stderr
        builder = f"pytest-isolate-lane-build-{uuid.uuid4().hex[:8]}"
        try:
            made = runner.run(
                "run", "--name", builder, "--network", "none", "-v", f"{wheels}:/wheels:ro", base,
                "sh", "-c", "python3 -m venv /opt/venv && /opt/venv/bin/pip install -q --no-index /wheels/*.whl",
                timeout=600,
            )
            assert made.returncode == 0, made.stderr
            committed = runner.run("commit", builder, tag, timeout=600)
            assert committed.returncode == 0, committed.stderr
        finally:
            runner.run("rm", "-f", builder)
            runner.run("rmi", base)
    return tag


# What runs in the job's container: install the plugin, show `info`, run the project.
JOB = """\
set -e
/opt/venv/bin/pip install -q --no-index --no-deps /plugin/*.whl
cp -r /project /tmp/project && cd /tmp/project
echo '--- info'
/opt/venv/bin/pytest-isolate info
echo '--- pytest'
/opt/venv/bin/pytest -p no:cacheprovider -ra || true
"""


@dataclasses.dataclass(frozen=True)
class JobResult:
    info: list[str]
    pytest: list[str]
    returncode: int
    output: str

    def failure_lines(self) -> list[str]:
        return [line for line in self.pytest if line.startswith(("FAILED ", "ERROR "))]

    def info_value(self, name: str) -> str:
        return next(line.split(":", 1)[1].strip() for line in self.info if line.strip().startswith(f"{name}:"))

    def flags_line(self) -> str | None:
        """The command line ``info`` prints under "To Make Every Argument Work"."""
        for index, line in enumerate(self.info):
            if line.startswith(" To Make Every Argument Work"):
                return self.info[index + 1].strip()
        return None


def run_job(runner: Engine, tag: str, project: str, wheel_dir: str, flags: list[str], name: str | None = None) -> JobResult:
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as script:
        script.write(JOB)
    os.chmod(script.name, 0o644)
    try:
        done = runner.run(
            "run", "--rm", "--network", "none", "--label", LABEL, *(["--name", name] if name else []),
            "-e", "COLUMNS=1000",
            "-v", f"{wheel_dir}:/plugin:ro", "-v", f"{project}:/project:ro", "-v", f"{script.name}:/job.sh:ro",
            *flags, tag, "sh", "/job.sh",
            timeout=300,
        )
    finally:
        os.unlink(script.name)
    output = done.stdout + done.stderr
    lines = done.stdout.splitlines()
    info_at = lines.index("--- info") if "--- info" in lines else len(lines)
    pytest_at = lines.index("--- pytest") if "--- pytest" in lines else len(lines)
    return JobResult(lines[info_at + 1 : pytest_at], lines[pytest_at + 1 :], done.returncode, output)


def flags_from(line: str, engine_name: str) -> list[str]:
    """``podman run --a --b x ...`` -> ["--a", "--b", "x"]."""
    words = line.split()
    assert words[:2] == [engine_name, "run"] and words[-1] == "...", line
    return words[2:-1]
