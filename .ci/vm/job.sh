#!/bin/bash
# The lane's job, run by the guest (as root, at boot) from the job folder:
#   /job/src      the tree under test        /job/wheels  its wheel, built on the host
#   /job/args     pytest arguments, one a line (empty: each run's default selection)
#   /job/runs     which runs: "root rootless" by default
#   /job/out      results: <run>.xml (junit), <run>.log, <run>.rc, facts.txt
# Each run's exit code is written before the next starts, so a VM killed at
# its time limit still tells which runs finished.
set -u
out=/job/out
venv=/opt/venv
user=isolate
uid=$(id -u "$user")

# The default selections: what a pure cgroup v2 + systemd host proves (the v2
# limit code, storage and isolation on a stock Debian kernel, rootless with a
# delegated cgroup), sized to fit the lane's ~15 minutes under TCG.
root_tests="tests/test_limits.py tests/test_usage_report.py tests/test_storage.py tests/test_network.py tests/test_preparer.py tests/test_init_program.py"
rootless_tests="tests/test_rootless.py tests/test_init_program.py"
# What the guest has: a test that would skip for one of these fails instead.
root_require=root,overlay,cgroup,cgroup_v2,netns,fuse_overlayfs,systemd,memfd_exec
rootless_require=rootless,overlay,cgroup_v2,cgroup_delegated,netns,fuse_overlayfs,systemd,memfd_exec

# One test's wall-clock bound (pytest-timeout): TCG runs a test 6-20x slower
# than a host, so this is generous; past it the test fails with its stack.
test_timeout=300

mapfile -t args < <(grep -v '^$' /job/args 2>/dev/null)
runs=$(cat /job/runs 2>/dev/null || echo "root rootless")

stamp() { echo "[$(cut -d' ' -f1 /proc/uptime)s] $*"; }

{
  echo "kernel: $(uname -r)"
  echo "cgroup fs: $(stat -fc %T /sys/fs/cgroup)"
  echo "root controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
  echo "python: $($venv/bin/python -V 2>&1)"
  echo "overlay in /proc/filesystems at job start: $(grep -qw overlay /proc/filesystems && echo yes || echo no)"
} > $out/facts.txt

# The tree under test, on the guest's own disk (9p is slow, and the tests
# write beside themselves); its wheel into the shared venv, offline.
stamp "install"
rm -rf /srv/src && cp -a /job/src /srv/src
$venv/bin/pip install -q --no-index --find-links /opt/wheels --find-links /job/wheels pytest-isolate \
  || { echo "pip install of the tree under test failed"; echo 1 > $out/install.rc; exit 1; }
echo 0 > $out/install.rc

# Run 1: as root, the whole machine's powers (cgroup v2 written directly).
run_root() {
  cd /srv/src || return 1
  local selection=("${args[@]}")
  [ ${#selection[@]} -eq 0 ] && read -ra selection <<< "$root_tests"
  PYTEST_ISOLATE_REQUIRE=$root_require $venv/bin/pytest -n 2 -p no:cacheprovider -v -rfEs --durations=25 --timeout=$test_timeout --timeout-method=thread \
    --junitxml=$out/root.xml "${selection[@]}"
}

# Run 2: as an ordinary user whose systemd user manager runs (lingering) and
# hands it a delegated cgroup: what a laptop or a CI runner's user has.
run_rootless() {
  local home=/home/$user i
  rm -rf "$home/src" && cp -a /srv/src "$home/src" && chown -R "$user:" "$home/src"
  # user@UID.service starts a few seconds after boot; its bus is what
  # systemd-run --user talks to.
  for i in $(seq 1 120); do
    systemctl is-active -q "user@$uid.service" && [ -S "/run/user/$uid/bus" ] && break
    sleep 0.5
  done
  systemctl is-active "user@$uid.service" || { echo "user@$uid.service never became active"; return 1; }
  echo "delegated to user@$uid.service: $(cat /sys/fs/cgroup/user.slice/user-$uid.slice/user@$uid.service/cgroup.subtree_control 2>&1)" >> $out/facts.txt
  local selection=("${args[@]}")
  [ ${#selection[@]} -eq 0 ] && read -ra selection <<< "$rootless_tests"
  local junit=$home/rootless.xml
  runuser -u "$user" -- env -C "$home/src" HOME="$home" XDG_RUNTIME_DIR="/run/user/$uid" \
    DBUS_SESSION_BUS_ADDRESS="unix:path=/run/user/$uid/bus" PYTEST_ISOLATE_REQUIRE=$rootless_require \
    systemd-run --user --scope --quiet -p Delegate=yes -- \
    $venv/bin/pytest -n 2 -p no:cacheprovider -v -rfEs --durations=25 --timeout=$test_timeout --timeout-method=thread --junitxml="$junit" "${selection[@]}"
  local rc=$?
  cp "$junit" $out/rootless.xml 2>/dev/null
  return $rc
}

for run in $runs; do
  stamp "run $run: start"
  start=$(cut -d' ' -f1 /proc/uptime)
  "run_$run" > $out/$run.log 2>&1
  rc=$?
  echo $rc > $out/$run.rc
  echo "$(awk -v a="$start" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.0f", b - a }')" > $out/$run.seconds
  stamp "run $run: exit $rc"
done
stamp "done"
