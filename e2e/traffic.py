"""Simulated inference traffic through the agents (on this machine only, bounded in rate and time)."""

from __future__ import annotations

import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence


def _address(target: int | str) -> str:
    """A loopback port (an agent process), or host:port (an agent in a pod on the real node)."""
    return f"127.0.0.1:{target}" if isinstance(target, int) else target


class Traffic:
    """Sends GET /infer?model=M to a random agent, `rate` requests a second, until stopped."""

    def __init__(
        self,
        ports: Callable[[], Sequence[int | str]],
        model: str,
        rate: float = 40.0,
        max_seconds: float = 600.0,
    ) -> None:
        self.ports = ports
        self.model = model
        self.rate = rate
        self.max_seconds = max_seconds
        self.results: Counter[tuple[str, int]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(7)
        end = time.monotonic() + self.max_seconds
        gap = 1.0 / self.rate
        while not self._stop.is_set() and time.monotonic() < end:
            ports = self.ports()
            if ports:
                port = rng.choice(ports)
                try:
                    with urllib.request.urlopen(
                        f"http://{_address(port)}/infer?model={self.model}", timeout=2
                    ) as r:
                        self.results[("ok", r.status)] += 1
                except urllib.error.HTTPError as err:
                    self.results[("error", err.code)] += 1
                except OSError:
                    self.results[("unreachable", 0)] += 1
            self._stop.wait(gap)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
