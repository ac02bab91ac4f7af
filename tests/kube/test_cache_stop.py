"""Stopping the informer cache must not wait for its watches to time out.

A watch is a long GET that the API server may leave silent for its whole timeout (a minute). Each
informer's thread sits in a blocking read of it; stopping the cache used to close the response,
which waits for the reader's buffer lock, i.e. for the next byte or the timeout: a SIGTERMed
operator with seven informers took 144 s to exit (past any pod's grace period). Here a real HTTP
server answers the list and then holds the watch open without a byte.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from ekko.kube import client as kube
from ekko.kube.cache import PODS, Informer, Store


class SilentWatchServer:
    """Lists one pod; a watch gets its headers and then nothing until the server closes."""

    def __init__(self) -> None:
        self.watching = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if "watch=true" in self.path:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.flush()
                    outer.watching.set()
                    outer.release.wait(120)  # silent, as a quiet watch is
                    return
                body = json.dumps(
                    {
                        "kind": "PodList",
                        "apiVersion": "v1",
                        "metadata": {"resourceVersion": "5"},
                        "items": [
                            {"metadata": {"name": "a", "namespace": "ns", "resourceVersion": "5"}}
                        ],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[SilentWatchServer]:
    s = SilentWatchServer()
    yield s
    s.close()


def test_stop_ends_a_silent_watch_at_once(server: SilentWatchServer, tmp_path: Path) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server.url}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    (tmp_path / "config").write_text(yaml.safe_dump(config))
    api = kube.connect(str(tmp_path / "config")).api
    store = Store(PODS)
    informer = Informer(api, PODS, "ns", store, lambda *_: None)
    informer.start()
    assert server.watching.wait(30), "the informer never started its watch"
    assert store.get("ns", "a") is not None  # listed before it watched
    thread = informer._thread
    assert thread is not None

    started = time.monotonic()
    informer.stop()
    stop_took = time.monotonic() - started
    thread.join(timeout=20)

    # The watch would stay silent for 120 s here (60 s in production): both bounds are far below.
    assert stop_took < 5, f"stop() blocked for {stop_took:.1f}s"
    assert not thread.is_alive(), "the informer's thread still reads its watch"
