"""Polling for e2e tests: the only place in the project that may wait and retry.

Poll a condition with a deadline instead of sleeping a guessed time; on timeout, say what was
awaited and what was last seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeoutError(AssertionError):
    pass


def wait_for(
    probe: Callable[[], T | None],
    what: str,
    timeout: float = 30.0,
    interval: float = 0.2,
    describe: Callable[[], object] | None = None,
) -> T:
    """Call probe until it returns a truthy value and return that value.

    `describe` (optional) is called on timeout to show the last observed state.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            seen = f"; last seen: {describe()}" if describe else ""
            raise WaitTimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{seen}")
        time.sleep(interval)
