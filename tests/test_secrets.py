"""secrets= and env=: the host's credential files and environment variables, hidden by default.

The credential files here are fakes in a home of the test's own (HOME points
at it); /etc/shadow is the host's, only ever read, and only inside containers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONTAINER
from helpers import failure_lines, run

from pytest_isolate.container import credentials
from pytest_isolate.environment import ENV_EXPECTED, EnvPolicy, looks_like_credential, parse_policy

FAKE = "FAKE-SECRET-of-the-host"
DIRECTORIES = (".ssh", ".gnupg", ".aws", ".config/gcloud", ".azure", ".kube")
FILES = (".docker/config.json", ".netrc", ".pypirc", ".git-credentials")


def _fake_home(home: Path) -> Path:
    for name in DIRECTORIES:
        (home / name).mkdir(parents=True)
        (home / name / "key").write_text(FAKE)
    for name in FILES:
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(FAKE)
    return home


CHECKS = f"""
import os
HOME = os.environ["HOME"]
DIRECTORIES = {DIRECTORIES!r}
FILES = {FILES!r}

def hidden():
    return {{name: os.listdir(os.path.join(HOME, name)) for name in DIRECTORIES}} | {{
        name: open(os.path.join(HOME, name)).read() for name in FILES
    }}

def all_hidden():
    return {{name: [] for name in DIRECTORIES}} | {{name: "" for name in FILES}}
"""


@pytest.mark.requires(*CONTAINER)
def test_credential_files_hidden_unless_asked(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _fake_home(pytester.path / "home")
    monkeypatch.setenv("HOME", str(home))
    pytester.makepyfile(checks=CHECKS)
    pytester.makepyfile(
        test_files=f"""
        import os, tempfile
        from checks import hidden, all_hidden, HOME
        from pytest_isolate import isolated

        @isolated
        def test_hidden_as_root():
            assert hidden() == all_hidden()
            assert open("/etc/shadow").read() == ""
            assert open("/etc/gshadow").read() == ""
            with open(os.path.join(HOME, ".netrc"), "w") as handle:
                handle.write("mine")  # a masked file is an ordinary, writable empty file
            with open("/etc/shadow.new", "w") as handle:
                handle.write("root:*:1::::::\\n")
            os.rename("/etc/shadow.new", "/etc/shadow")  # as useradd does
            with pytest_raises(OSError):
                open(os.path.join(HOME, ".ssh", "new"), "w")  # an empty read-only directory

        @isolated(secrets=True)
        def test_shown_when_asked():
            assert hidden() == {{name: ["key"] for name in {DIRECTORIES!r}}} | {{name: {FAKE!r} for name in {FILES!r}}}
            assert open("/etc/shadow").read().startswith("root:")

        def pytest_raises(kind):
            import pytest
            return pytest.raises(kind)
        """
    )
    result = run(pytester)
    assert failure_lines(result) == []
    result.assert_outcomes(passed=2)
    assert (home / ".netrc").read_text() == FAKE
    assert "root:" in Path("/etc/shadow").read_text()
    # --isolate-secrets and the ini key: every test sees them.
    pytester.makepyfile(
        test_files="""
        from checks import hidden, all_hidden
        from pytest_isolate import isolated

        @isolated
        def test_shown():
            assert hidden() != all_hidden()
        """
    )
    run(pytester, "--isolate-secrets").assert_outcomes(passed=1)
    run(pytester, "-o", "isolate_secrets=true").assert_outcomes(passed=1)


@pytest.mark.requires(*CONTAINER)
def test_image_keeps_its_own_shadow_and_hides_visible_host_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """rootfs=: the image's /etc/shadow is its own; host homes shown in it (the project is one here) are masked."""
    project = Path(f"/tmp/pytest-isolate-secrets-image-{os.getpid()}")
    project.mkdir(mode=0o755)
    try:
        root = project / "tiny-root"
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "shadow").write_text("the image's own\n")
        _fake_home(project)  # the project directory is the home: overlaid into the image
        (project / "checks.py").write_text(CHECKS)
        (project / "test_image.py").write_text(
            "from checks import hidden, all_hidden\n"
            "from pytest_isolate import isolated\n\n"
            f"@isolated(rootfs={str(root)!r})\n"
            "def test_in_image():\n"
            "    assert open('/etc/shadow').read() == \"the image's own\\n\"\n"
            "    assert hidden() == all_hidden()\n"
        )
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-ra"],
            cwd=project, capture_output=True, text=True, env={**os.environ, "HOME": str(project), "COLUMNS": "1000"},
        )
        assert result.stdout.splitlines()[-1].startswith("===") and " 1 passed " in result.stdout.splitlines()[-1], result.stdout
    finally:
        subprocess.run(["rm", "-rf", str(project)], check=True)


@pytest.mark.requires("root", "overlay", "netns")
def test_hidden_rootless(tmp_path: Path) -> None:
    """pytest as an ordinary user (uid 65534): its own home's secrets are masked in its rootless containers."""
    project = Path(f"/tmp/pytest-isolate-secrets-{os.getpid()}")
    project.mkdir(mode=0o777)
    try:
        home = _fake_home(project / "home")
        (project / "checks.py").write_text(CHECKS)
        (project / "test_rootless_secrets.py").write_text(
            "import os\n"
            "from checks import hidden, all_hidden\n"
            "from pytest_isolate import isolated\n\n"
            "@isolated\n"
            "def test_hidden():\n"
            "    assert os.getpid() == 2\n"
            "    assert hidden() == all_hidden()\n\n"
            "@isolated(secrets=True)\n"
            "def test_shown():\n"
            "    assert hidden() != all_hidden()\n"
        )
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "--inh-caps=+dac_override,+dac_read_search", "--ambient-caps=+dac_override,+dac_read_search",
             sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-ra"],
            cwd=project, capture_output=True, text=True, env={**os.environ, "HOME": str(home), "COLUMNS": "1000"},
        )
        assert result.stdout.splitlines()[-1].startswith("===") and " 2 passed" in result.stdout.splitlines()[-1], result.stdout
    finally:
        subprocess.run(["rm", "-rf", str(project)], check=True)


def test_secrets_planned_from_the_homes_that_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".netrc").write_text(FAKE)
    (home / ".kube").symlink_to(home / ".ssh")  # a link: the real path is masked, once
    monkeypatch.setenv("HOME", str(home))
    found = [secret for secret in credentials.existing_secrets() if secret.path.startswith(str(home))]
    assert found == [credentials.Secret(str(home / ".ssh"), True), credentials.Secret(str(home / ".netrc"), False)]
    ops = credentials.mask_ops(tuple(found), None)
    assert [op.describe() for op in ops] == [
        f"mask {home}/.ssh (an empty read-only directory: secrets=False)",
        f"mask {home}/.netrc (an empty file: secrets=False)",
    ]
    # An image shows only the host trees overlaid on it.
    assert credentials.mask_ops(tuple(found), [str(tmp_path / "elsewhere")]) == []
    assert len(credentials.mask_ops(tuple(found), [str(home)])) == 2


# ------------------------------------------------------------------------ env=


@pytest.mark.parametrize(
    "name, credential",
    [
        ("GITHUB_TOKEN", True), ("CI_JOB_TOKEN", True), ("PGPASSWORD", True), ("MY_PASSWD", True),
        ("AWS_SECRET_ACCESS_KEY", True), ("AWS_ACCESS_KEY_ID", True), ("GOOGLE_APPLICATION_CREDENTIALS", True),
        ("HEROKU_API_KEY", True), ("STRIPE_APIKEY", True), ("SSH_AUTH_SOCK", True), ("NPM_CONFIG__AUTH", True),
        ("DEPLOY_PRIVATE_KEY", True), ("client_secret", True), ("KUBECONFIG", True),
        ("TOKENIZERS_PARALLELISM", False), ("GIT_AUTHOR_NAME", False), ("XAUTHORITY", False), ("PATH", False),
        ("PYTEST_XDIST_WORKER", False), ("PASSWORDLESS", False), ("DATABASE_URL", False),
    ],
)
def test_what_looks_like_a_credential(name: str, credential: bool) -> None:
    assert looks_like_credential(name) is credential


def test_policy_syntax() -> None:
    assert parse_policy("default") == EnvPolicy()
    assert parse_policy(["PATH", "LC_*"]) == EnvPolicy("none", ((True, "PATH"), (True, "LC_*")))
    assert parse_policy("-DATABASE_URL, +GITHUB_TOKEN") == EnvPolicy(
        "default", ((False, "DATABASE_URL"), (True, "GITHUB_TOKEN"))
    )
    assert parse_policy(["all", "-AWS_*"]) == EnvPolicy("all", ((False, "AWS_*"),))
    assert parse_policy("default GITHUB_TOKEN") == EnvPolicy("default", ((True, "GITHUB_TOKEN"),))
    only = parse_policy(["KEEP_ME"])
    assert [n for n in ("KEEP_ME", "PATH", "LC_ALL", "OTHER", "PYTEST_TOKEN") if only.passes(n)] == ["KEEP_ME", "PATH", "LC_ALL"]
    assert parse_policy("all").passes_everything and not parse_policy("all,-X").passes_everything


ENV_SUITE = """
import os, subprocess
from pytest_isolate import isolated

def seen():
    names = {"GITHUB_TOKEN", "MY_PASSWORD", "AWS_ACCESS_KEY_ID", "SSH_AUTH_SOCK", "KEEP_ME", "TOKENIZERS_PARALLELISM"}
    child = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
    raw = open("/proc/self/environ", "rb").read()
    leaked = [value for value in ("ghp_fake", "hunter2", "AKIAFAKE", "/tmp/agent.sock") if value.encode() in raw]
    return sorted(n for n in names if n in os.environ), sorted(n for n in names if f"{n}=" in child), leaked

@isolated
def test_default():
    assert seen() == (["KEEP_ME", "TOKENIZERS_PARALLELISM"], ["KEEP_ME", "TOKENIZERS_PARALLELISM"], [])
    assert "PATH" in os.environ and "PYTEST_CURRENT_TEST" in os.environ

@isolated(env=["KEEP_ME"])
def test_only_listed():
    assert seen() == (["KEEP_ME"], ["KEEP_ME"], [])
    assert "PATH" in os.environ

@isolated(env=["all", "-KEEP_ME"])
def test_all_but():
    names, _, leaked = seen()
    # The original block held KEEP_ME: zeroed too, though the others are back in the environ.
    assert "KEEP_ME" not in names and "GITHUB_TOKEN" in names and leaked == []

@isolated(env="all")
def test_all():
    assert seen()[0] == ["AWS_ACCESS_KEY_ID", "GITHUB_TOKEN", "KEEP_ME", "MY_PASSWORD", "SSH_AUTH_SOCK", "TOKENIZERS_PARALLELISM"]
"""


@pytest.mark.requires(*CONTAINER)
@pytest.mark.parametrize("args", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_env_policy(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]) -> None:
    if args:
        pytest.importorskip("xdist")
    for name, value in {
        "GITHUB_TOKEN": "ghp_fake", "MY_PASSWORD": "hunter2", "AWS_ACCESS_KEY_ID": "AKIAFAKE",
        "SSH_AUTH_SOCK": "/tmp/agent.sock", "KEEP_ME": "1", "TOKENIZERS_PARALLELISM": "false",
    }.items():
        monkeypatch.setenv(name, value)
    pytester.makepyfile(test_env=ENV_SUITE)
    result = run(pytester, *args)
    assert failure_lines(result) == []
    result.assert_outcomes(passed=4)
    # The ini key and the command line set the default of every test; the marker still wins.
    pytester.makepyfile(
        test_env="""
        import os
        from pytest_isolate import isolated

        @isolated
        def test_from_default():
            assert os.environ.get("GITHUB_TOKEN") == "ghp_fake" and "KEEP_ME" not in os.environ

        @isolated(env="default")
        def test_marker_wins():
            assert "GITHUB_TOKEN" not in os.environ and "KEEP_ME" in os.environ
        """
    )
    run(pytester, *args, "-o", "isolate_env=-KEEP_ME,+GITHUB_TOKEN").assert_outcomes(passed=2)
    run(pytester, *args, "--isolate-env=-KEEP_ME,+GITHUB_TOKEN").assert_outcomes(passed=2)


@pytest.mark.parametrize(
    "source, message",
    [
        (("-o", "isolate_env=PATH,-FOO"),
         f"ERROR: ini option isolate_env = PATH,-FOO is invalid: expected {ENV_EXPECTED}; 'PATH' (a name to pass) "
         "and '-FOO' (a change to the default) are mixed: put a base first, e.g. [\"default\", \"-FOO\", \"+PATH\"]"),
        (("--isolate-env=PATH a+b",),
         f"ERROR: --isolate-env=PATH a+b is invalid: expected {ENV_EXPECTED}; 'a+b' is not a variable name or pattern"),
        (("-o", "isolate_secrets=maybe"),
         "ERROR: ini option isolate_secrets = maybe is invalid: expected True (the test sees the host's credential "
         "files) or False (hidden: the default)"),
    ],
)
def test_bad_defaults_are_usage_errors(pytester: pytest.Pytester, source: tuple[str, ...], message: str) -> None:
    pytester.makepyfile("def test_it():\n    pass\n")
    result = run(pytester, *source)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.stderr.lines if line] == [message]


@pytest.mark.parametrize(
    "marker, written, detail",
    [
        ('env=["PATH", "-FOO"]', "env=['PATH', '-FOO']",
         "; 'PATH' (a name to pass) and '-FOO' (a change to the default) are mixed: put a base first, "
         'e.g. ["default", "-FOO", "+PATH"]'),
        ('env=["A=B"]', "env=['A=B']", "; 'A=B' is not a variable name or pattern"),
        ("env=[]", "env=[]", "; it is empty"),
        ("env=3", "env=3", ""),
    ],
)
def test_bad_env_marker_values(pytester: pytest.Pytester, marker: str, written: str, detail: str) -> None:
    pytester.makepyfile(
        f"""
        from pytest_isolate import isolated

        @isolated({marker})
        def test_it():
            pass
        """
    )
    assert failure_lines(run(pytester)) == [
        "ERROR test_bad_env_marker_values.py - Failed: test_bad_env_marker_values.py::test_it: "
        f"@isolated({written}) is invalid: expected {ENV_EXPECTED}{detail}"
    ]


def test_bad_secrets_marker_value(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pytest_isolate import isolated

        @isolated(secrets="sometimes")
        def test_it():
            pass
        """
    )
    assert failure_lines(run(pytester)) == [
        "ERROR test_bad_secrets_marker_value.py - Failed: test_bad_secrets_marker_value.py::test_it: "
        "@isolated(secrets='sometimes') is invalid: expected True (the test sees the host's credential files) "
        "or False (hidden: the default)"
    ]
