"""Child processes of the e2e harness die with it, even when the test run is killed.

A tiny launcher sets the parent-death signal and then execs the real command (the setting
survives exec). It runs as its own interpreter, so nothing unsafe happens between fork and exec
in a test process that has threads (as `preexec_fn` would risk).
"""

from __future__ import annotations

import os
import sys

_LAUNCHER = (
    "import ctypes, os, signal, sys;"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM);"  # PR_SET_PDEATHSIG = 1
    "os.getppid() == int(sys.argv[1]) or sys.exit(1);"  # the parent is gone already: do not start
    "os.execvp(sys.argv[2], sys.argv[2:])"
)


def dying_with_parent(cmd: list[str]) -> list[str]:
    """The command, wrapped so that it gets SIGTERM when this process dies."""
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *cmd]
