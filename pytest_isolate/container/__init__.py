"""The sandbox: throw-away Linux containers, knowing nothing of pytest.

Nothing here imports pytest or the runner (``tests/test_imports.py`` checks
it); what runs inside a container is a callable it is handed
(``launcher.ContainerJob.run_test``).  One container's life, and where each
step is:

1. **prepare** - before the test, mostly once per session or while the
   previous test still runs: the mount plan (``mountplan``), the hardening
   (``hardening.Hardening.for_this_host``, ``hardening.Restriction``), the
   test's cgroup (``cgroups``) and, as root, the whole container, built by
   the preparer (``preparer``), or else the PID namespace with its init
   (``prepared``).
2. **enter** - fork into that PID namespace; the test process joins the
   container built ahead (``launcher.run_prepared_test_process``), or builds
   it itself (``launcher.run_test_process``: namespaces, ``rootfs``,
   network, ``hardening``), then calls ``run_test``.
3. **wait** - pytest reads the test's messages until "done" or its exit
   (``pytest_isolate.runtime.Runtime._watch``, ``lifecycle.ContainerProcesses``).
4. **collect** - usage (``cgroups``), the writable layer (``fsdiff``), and
   the processes and cgroup reaped off the test's path (``lifecycle.Graveyard``).
"""
