"""Analysis queries: the placeholders a ModelVersion's query may use."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from ekko.kube.promql import PrometheusAuth, measure, render


def test_the_canary_and_the_stable_version_are_filled_in() -> None:
    query = 'a{model="{{model}}",version="{{version}}"} / a{model="{{model}}",version="{{stable}}"}'
    assert (
        render(query, "rank", "v3", "v2")
        == 'a{model="rank",version="v3"} / a{model="rank",version="v2"}'
    )


def test_queries_carry_tenant_headers_and_a_fresh_bearer_token(tmp_path: Path) -> None:
    """Against a real HTTP server on loopback, as a Mimir/Thanos front end would see it."""
    seen: list[tuple[str | None, str | None]] = []  # (tenant, authorization)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.headers.get("X-Scope-OrgID"), self.headers.get("Authorization")))
            ok = self.headers.get("Authorization") == f"Bearer {token.read_text().strip()}"
            body = {"status": "success", "data": {"resultType": "vector",
                    "result": [{"value": [0, "0.25"]}]}}  # fmt: skip
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        def log_message(self, *args: object) -> None:
            pass

    token = tmp_path / "token"
    token.write_text("first\n")
    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"http://127.0.0.1:{server.server_port}"
        auth = PrometheusAuth(headers=(("X-Scope-OrgID", "team-a"),), bearer_token_file=str(token))
        now = datetime(2026, 11, 29, tzinfo=UTC)
        assert measure(address, "m", "up", now, auth).value == 0.25
        token.write_text("rotated")  # read again on the next query
        assert measure(address, "m", "up", now, auth).value == 0.25
        refused = measure(address, "m", "up", now)  # no token
        assert refused.error == "query failed: HTTP 401 Unauthorized"
    finally:
        server.shutdown()
    assert [tenant for tenant, _ in seen] == ["team-a", "team-a", None]
    assert seen[1][1] == "Bearer rotated"


def test_a_vector_query_that_cannot_be_answered_raises_with_the_reason() -> None:
    import pytest

    from ekko.kube.promql import QueryError, vector

    server = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_port
    server.server_close()  # nothing listens there now
    with pytest.raises(QueryError, match="query failed"):
        vector(f"http://127.0.0.1:{port}", "up")


def test_a_long_query_is_posted_as_a_form() -> None:
    """A stream's pod matcher over hundreds of servers makes a long query: it goes in the body."""
    import urllib.parse

    from ekko.kube.promql import MAX_GET_QUERY, vector

    seen: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def answer(self, query: str) -> None:
            seen.append((self.command, query))
            body = {"status": "success", "data": {"resultType": "vector", "result": [
                {"metric": {"pod": "a"}, "value": [0, "1.5"]}]}}  # fmt: skip
            self.send_response(200)
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        def do_GET(self) -> None:
            self.answer(urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["query"][0])

        def do_POST(self) -> None:
            form = self.rfile.read(int(self.headers["Content-Length"])).decode()
            self.answer(urllib.parse.parse_qs(form)["query"][0])

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"http://127.0.0.1:{server.server_port}"
        short = 'up{pod=~"a|b"}'
        long = 'up{pod=~"' + "|".join(f"server-{i}" for i in range(MAX_GET_QUERY // 8)) + '"}'
        assert vector(address, short) == [({"pod": "a"}, 1.5)]
        assert vector(address, long) == [({"pod": "a"}, 1.5)]
    finally:
        server.shutdown()
    assert seen == [("GET", short), ("POST", long)]
