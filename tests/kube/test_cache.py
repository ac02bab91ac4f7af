"""The informer cache's logic: events applied in order, deletions, a relist after 410 Gone that
drops what vanished meanwhile, and listeners told after the store changed.

A scripted stand-in answers the informer's list and watch requests (the e2e suite runs the cache
against a real API server and counts its requests there).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ekko.kube.cache import ASSIGNMENTS, PODS, GoneError, Informer, Store


def obj(name: str, rv: int, pool: str = "p", ns: str = "ns", **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "resourceVersion": str(rv),
            "labels": {"ekko.dev/pool": pool},
            "managedFields": [{"manager": "x"}],
        },
        **extra,
    }


class Raw:
    """What call_raw's caller reads: a body, or a stream of newline-separated events."""

    def __init__(self, body: bytes) -> None:
        self.status = 200
        self.data = body
        self.response = self

    def read(self) -> bytes:
        return self.data

    def stream(self, amt: int, decode_content: bool = True) -> Any:
        # Split mid-line on purpose: the reader must reassemble events across chunks.
        for i in range(0, len(self.data), 7):
            yield self.data[i : i + 7]

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class Server:
    """Answers lists with ``lists`` (in turn) and watches with ``watches`` (in turn); records
    each request's URL."""

    def __init__(self, lists: list[list[dict[str, Any]]], watches: list[list[dict[str, Any]]]):
        self.lists = lists
        self.watches = watches
        self.urls: list[str] = []
        self.informer: Informer | None = None

    def param_serialize(self, method: str, path: str, **kw: Any) -> tuple[Any, ...]:
        query = "&".join(f"{k}={v}" for k, v in kw["query_params"])
        return method, f"{path}?{query}", {}, None, []

    def call_api(self, method: str, url: str, **_: Any) -> Raw:
        self.urls.append(url)
        if "watch=true" in url:
            if not self.watches:
                assert self.informer is not None
                self.informer.stop()  # the script is over
                return Raw(b"")
            events = self.watches.pop(0)
            return Raw(b"".join(json.dumps(e).encode() + b"\n" for e in events))
        items = self.lists.pop(0)
        rv = max((int(i["metadata"]["resourceVersion"]) for i in items), default=1)
        body = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)}}
        return Raw(json.dumps({**body, "items": items}).encode())


def run(server: Server, kind: Any = PODS) -> tuple[Store, list[tuple[str, str, str]]]:
    store = Store(kind)
    seen: list[tuple[str, str, str]] = []

    def listener(k: str, event: str, old: Any, new: Any) -> None:
        body = new if new is not None else old
        name = body["metadata"]["name"]
        # The store already holds the change when the listener hears of it.
        assert (store.get("ns", name) is None) == (event == "DELETED")
        seen.append((event, name, body["metadata"]["resourceVersion"]))

    informer = Informer(server, kind, "ns", store, listener)  # type: ignore[arg-type]
    server.informer = informer
    informer.run()
    return store, seen


def test_events_are_applied_in_order_with_deletions_and_bookmarks() -> None:
    server = Server(
        lists=[[obj("a", 1)]],
        watches=[
            [
                {"type": "ADDED", "object": obj("b", 2)},
                {"type": "MODIFIED", "object": obj("a", 3, status={"phase": "Running"})},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
                {"type": "DELETED", "object": obj("b", 10)},
            ],
            [{"type": "ADDED", "object": obj("c", 11)}],
        ],
    )
    store, seen = run(server)
    assert seen == [
        ("ADDED", "a", "1"),
        ("ADDED", "b", "2"),
        ("MODIFIED", "a", "3"),
        ("DELETED", "b", "10"),
        ("ADDED", "c", "11"),
    ]
    assert sorted(o["metadata"]["name"] for o in store.items("ns")) == ["a", "c"]
    assert store.get("ns", "a")["status"] == {"phase": "Running"}  # type: ignore[index]
    assert "managedFields" not in store.get("ns", "a")["metadata"]  # type: ignore[index]
    # The second watch resumed from the bookmark's version, the first from the list's.
    watches = [u for u in server.urls if "watch=true" in u]
    assert "resourceVersion=1&" in watches[0] and "resourceVersion=10&" in watches[1]
    assert all("labelSelector=ekko.dev/pool" in u for u in server.urls)


def test_a_relist_after_410_drops_what_vanished_and_reports_what_changed() -> None:
    server = Server(
        lists=[[obj("a", 1), obj("b", 1)], [obj("a", 5), obj("c", 6)]],
        watches=[[{"type": "ERROR", "object": {"code": 410, "message": "too old"}}], []],
    )
    store, seen = run(server)
    assert seen[:2] == [("ADDED", "a", "1"), ("ADDED", "b", "1")]
    # While nobody watched, b was deleted, a changed and c was created.
    assert sorted(seen[2:]) == [("ADDED", "c", "6"), ("DELETED", "b", "1"), ("MODIFIED", "a", "5")]
    assert sorted(o["metadata"]["name"] for o in store.items()) == ["a", "c"]
    assert sum("watch=true" not in u for u in server.urls) == 2  # listed twice


def test_a_410_raises_gone_and_other_errors_raise() -> None:
    informer = Informer(None, PODS, "ns", Store(PODS), lambda *a: None)  # type: ignore[arg-type]
    with pytest.raises(GoneError):
        informer.apply({"type": "ERROR", "object": {"code": 410}})
    with pytest.raises(RuntimeError):
        informer.apply({"type": "ERROR", "object": {"code": 500, "message": "boom"}})


def test_the_pool_index_follows_label_changes_and_deletions() -> None:
    store = Store(PODS)
    store.put(obj("a", 1, pool="p"))
    store.put(obj("b", 1, pool="q"))
    assert [o["metadata"]["name"] for o in store.items("ns", index="p")] == ["a"]
    store.put(obj("a", 2, pool="q"))  # relabelled
    assert store.items("ns", index="p") == []
    assert sorted(o["metadata"]["name"] for o in store.items("ns", index="q")) == ["a", "b"]
    store.remove(("ns", "b"))
    assert [o["metadata"]["name"] for o in store.items(index="q")] == ["a"]
    assert store.items("other", index="q") == []


def test_parsed_values_are_kept_per_resource_version() -> None:
    store = Store(ASSIGNMENTS)
    calls: list[str] = []

    def parse(o: dict[str, Any]) -> str:
        calls.append(o["metadata"]["resourceVersion"])
        return o["metadata"]["resourceVersion"]

    first = obj("a", 1)
    store.put(first)
    assert store.parsed(first, parse) == store.parsed(first, parse) == "1"
    second = obj("a", 2)
    store.put(second)
    assert store.parsed(second, parse) == "2"
    assert calls == ["1", "2"]  # one validation per version, not per pass
