"""The preparer's entry point: ``python -I -S preparer_main.py SOCKET_FD PYTEST_PID FORKED_INIT``.

Run as a script, not with ``-m``, so that neither the user's environment nor
site-packages run in the process that builds containers as root, and the
package's ``__init__`` (which imports pytest) is skipped: the container
modules are loaded from the directory pytest loaded them from.
"""

import os
import sys
import types

if __name__ == "__main__":
    # The package's modules are found through its __path__ alone: nothing
    # of site-packages is put before the standard library.
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    package = types.ModuleType("pytest_isolate")
    package.__path__ = [package_dir]
    sys.modules["pytest_isolate"] = package
    from pytest_isolate.container.preparer import serve

    serve(int(sys.argv[1]), int(sys.argv[2]), forked_init=sys.argv[3] == "1")
