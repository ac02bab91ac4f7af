"""Informer-style caches: list once, then watch, so a pool pass reads memory, not the API.

A pool pass used to list models, pods, assignments, nodes and versions on every wake-up: O(fleet)
API calls and pydantic validations per pass, many passes a second at a few hundred servers. Here
each kind is listed once and then followed by a watch; the objects live in memory as plain dicts
(``managedFields`` dropped), indexed by namespace and by the pool they belong to, and a pass reads
them without calling the API. As client-go's reflector does, a watch that expires (410 Gone) or
fails is followed by a fresh list, and the difference between the old and the new list is
delivered as events, so an object deleted while nobody watched is not kept as a ghost.

Listeners get ``(kind, type, old, new)`` in the informer's thread, after the store was updated: a
listener that wakes a worker therefore never wakes it before the object it reacts to is readable.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes import client

from ekko.api.meta import GROUP, VERSION
from ekko.kube.calls import call_raw

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]
"""(namespace, name); the namespace is "" for cluster-scoped objects."""
Listener = Callable[[str, str, Obj | None, Obj | None], None]
"""(kind, event type ADDED/MODIFIED/DELETED, the object before, the object after)."""

T = TypeVar("T")

WATCH_SECONDS = 60
"""Server-side timeout of one watch request; the watch then resumes from the last version."""
READ_TIMEOUT_SECONDS = 90.0
"""A watch connection silent for this long (bookmarks arrive about once a minute) is dead."""
MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class Kind:
    """One resource the cache follows."""

    name: str
    """What listeners are told: "pods", "nodes", "serverassignments", ..."""
    group: str
    version: str
    plural: str
    namespaced: bool = True
    label_selector: str = ""
    index_by: Callable[[Obj], str] | None = None
    """A secondary index (e.g. the pool an object belongs to); "" leaves it out."""

    def path(self, namespace: str | None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"


def _pool_label(obj: Obj) -> str:
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(f"{GROUP}/pool", ""))


def _spec_pool(obj: Obj) -> str:
    return str((obj.get("spec") or {}).get("pool", ""))


PODS = Kind("pods", "", "v1", "pods", label_selector=f"{GROUP}/pool", index_by=_pool_label)
NODES = Kind("nodes", "", "v1", "nodes", namespaced=False)
POOLS = Kind("serverpools", GROUP, VERSION, "serverpools")
MODELS = Kind("models", GROUP, VERSION, "models", index_by=_spec_pool)
VERSIONS = Kind("modelversions", GROUP, VERSION, "modelversions")
ASSIGNMENTS = Kind("serverassignments", GROUP, VERSION, "serverassignments", index_by=_spec_pool)
POOL_KINDS = (POOLS, MODELS, VERSIONS, PODS, ASSIGNMENTS, NODES)
"""Everything a pool worker reads."""
STREAMS = Kind("updatestreams", GROUP, VERSION, "updatestreams")
OPERATOR_KINDS = (*POOL_KINDS, STREAMS)
"""What the operator's cache holds: the stream workers also read the namespace's other streams
(one stream per model)."""


class GoneError(Exception):
    """The watch's resource version is too old (HTTP 410): list again."""


class Store:
    """The objects of one kind, by key and by the kind's secondary index. Thread-safe."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self._lock = threading.Lock()
        self._objects: dict[Key, Obj] = {}
        self._index: dict[str, set[Key]] = {}
        self._parsed: dict[Key, tuple[str, Any]] = {}

    @staticmethod
    def key(obj: Obj) -> Key:
        meta = obj.get("metadata") or {}
        return str(meta.get("namespace") or ""), str(meta.get("name") or "")

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def items(self, namespace: str | None = None, index: str | None = None) -> list[Obj]:
        """Objects of a namespace (None: every one), and of one index value when given."""
        with self._lock:
            if index is not None:
                keys: Any = self._index.get(index, ())
                objs = [self._objects[k] for k in keys]
            else:
                objs = list(self._objects.values())
        if namespace is None:
            return objs
        return [o for o in objs if (o.get("metadata") or {}).get("namespace") == namespace]

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    def parsed(self, obj: Obj, parse: Callable[[Obj], T]) -> T:
        """``parse(obj)``, computed once per resource version of the object (a pass validates
        only what changed since the last one). Exceptions are not cached."""
        key = self.key(obj)
        version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        with self._lock:
            hit = self._parsed.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        value = parse(obj)
        with self._lock:
            if key in self._objects:
                self._parsed[key] = (version, value)
        return value

    def put(self, obj: Obj) -> Obj | None:
        """Store an object; return the previous one."""
        key = self.key(obj)
        with self._lock:
            old = self._objects.get(key)
            self._objects[key] = obj
            self._reindex(key, old, obj)
        return old

    def remove(self, key: Key) -> Obj | None:
        with self._lock:
            old = self._objects.pop(key, None)
            self._parsed.pop(key, None)
            self._reindex(key, old, None)
        return old

    def replace(self, objs: list[Obj]) -> list[tuple[str, Obj | None, Obj | None]]:
        """Swap in a fresh list; return the events that turn the old contents into it."""
        fresh = {self.key(o): o for o in objs}
        events: list[tuple[str, Obj | None, Obj | None]] = []
        with self._lock:
            for key, gone in self._objects.items():
                if key not in fresh:
                    events.append(("DELETED", gone, None))
            for key, new in fresh.items():
                old = self._objects.get(key)
                if old is None:
                    events.append(("ADDED", None, new))
                elif _version(old) != _version(new):
                    events.append(("MODIFIED", old, new))
            self._objects = fresh
            self._parsed = {k: v for k, v in self._parsed.items() if k in fresh}
            self._index = {}
            for key, obj in fresh.items():
                self._reindex(key, None, obj)
        return events

    def _reindex(self, key: Key, old: Obj | None, new: Obj | None) -> None:
        index_by = self.kind.index_by
        if index_by is None:
            return
        before = index_by(old) if old is not None else ""
        after = index_by(new) if new is not None else ""
        if before == after:
            return
        if before:
            keys = self._index.get(before)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._index[before]
        if after:
            self._index.setdefault(after, set()).add(key)


def _version(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


def _trim(obj: Obj) -> Obj:
    """Drop what no reader needs and what costs the most memory."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


class Informer:
    """Lists one kind (in one namespace, or all), then watches it, into a Store."""

    def __init__(
        self,
        api: client.ApiClient,
        kind: Kind,
        namespace: str | None,
        store: Store,
        notify: Listener,
    ) -> None:
        self.api = api
        self.kind = kind
        self.namespace = namespace
        self.store = store
        self.notify = notify
        self.synced = threading.Event()
        self.relists = 0
        """Lists made (the first one included): one more after every expiry or error."""
        self.last_error = ""
        self._stop = threading.Event()
        self._response: Any = None
        self._thread: threading.Thread | None = None
        self._own: set[Key] = set()

    def start(self) -> None:
        where = self.namespace or "all namespaces"
        self._thread = threading.Thread(
            target=self.run, name=f"informer {self.kind.name} {where}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:  # unblock a read in progress; the reader closes the response
            response.interrupt()

    def run(self) -> None:
        """List and watch until stopped; list again after a 410 or any failure (with backoff)."""
        backoff = 0.5
        while not self._stop.is_set():
            try:
                version = self.relist()
                backoff = 0.5
                self.watch(version)
            except GoneError:
                log.info("Watch of %s expired; listing again.", self.kind.name)
            except Exception as err:
                if self._stop.is_set():
                    return
                self.last_error = str(err)[:200]
                delay = backoff * random.uniform(0.8, 1.2)
                log.warning(
                    "Watch of %s failed (%s); listing again in %.1fs.", self.kind.name, err, delay
                )
                self._stop.wait(delay)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def relist(self) -> str:
        """Replace this informer's part of the store with a fresh list; return its version."""
        query: list[tuple[str, Any]] = []
        if self.kind.label_selector:
            query.append(("labelSelector", self.kind.label_selector))
        body = json.loads(call_raw(self.api, "GET", self.kind.path(self.namespace), query).data)
        items = [_trim(i) for i in body.get("items") or []]
        kind_name = _singular(body.get("kind", ""))
        for item in items:  # list items carry no kind; parsers want it
            item.setdefault("kind", kind_name)
            item.setdefault("apiVersion", body.get("apiVersion", ""))
        self.relists += 1
        fresh = {Store.key(i) for i in items}
        if self.namespace is None:
            events = self.store.replace(items)
        else:  # several namespaces share a store: only this one's keys are replaced
            events = []
            for key in self._own - fresh:
                old = self.store.remove(key)
                if old is not None:
                    events.append(("DELETED", old, None))
            for item in items:
                old = self.store.put(item)
                if old is None:
                    events.append(("ADDED", None, item))
                elif _version(old) != _version(item):
                    events.append(("MODIFIED", old, item))
        self._own = fresh
        self.synced.set()
        for kind, old, new in events:
            self._deliver(kind, old, new)
        return str((body.get("metadata") or {}).get("resourceVersion", ""))

    def watch(self, version: str) -> None:
        """Follow changes from ``version`` until stopped; raises GoneError when it is too old."""
        while not self._stop.is_set():
            query: list[tuple[str, Any]] = [
                ("watch", "true"),
                ("resourceVersion", version),
                ("allowWatchBookmarks", "true"),
                ("timeoutSeconds", WATCH_SECONDS),
            ]
            if self.kind.label_selector:
                query.append(("labelSelector", self.kind.label_selector))
            response = call_raw(
                self.api,
                "GET",
                self.kind.path(self.namespace),
                query,
                stream=True,
                timeout=READ_TIMEOUT_SECONDS,
            )
            self._response = response
            try:
                if self._stop.is_set():  # stopped before stop() could see this response
                    return
                for event in _lines(response):
                    version = self.apply(event) or version
                    if self._stop.is_set():
                        return
            finally:
                self._response = None
                response.release_conn()

    def apply(self, event: Obj) -> str:
        """One watch event into the store; the resource version to resume from ("" if none)."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise GoneError(obj.get("message", "resource version too old"))
            raise RuntimeError(f"watch error: {obj.get('message') or obj}")
        version = _version(obj)
        if kind == "BOOKMARK":
            return version
        key = Store.key(obj)
        if kind == "DELETED":
            self.store.remove(key)
            self._own.discard(key)
            self._deliver("DELETED", _trim(obj), None)  # its last state, as the server says
        elif kind in ("ADDED", "MODIFIED"):
            new = _trim(obj)
            old = self.store.put(new)
            self._own.add(key)
            self._deliver("ADDED" if old is None else "MODIFIED", old, new)
        return version

    def _deliver(self, kind: str, old: Obj | None, new: Obj | None) -> None:
        try:
            self.notify(self.kind.name, kind, old, new)
        except Exception:  # a listener's bug must not stop the cache
            log.exception("Listener of %s failed.", self.kind.name)


def _singular(list_kind: str) -> str:
    return list_kind[: -len("List")] if list_kind.endswith("List") else list_kind


def _lines(response: Any) -> Iterator[Obj]:
    """The JSON events of a watch response, one per line."""
    buffer = b""
    for chunk in response.stream(amt=65536, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
    if buffer.strip():
        yield json.loads(buffer)


class Cache:
    """The stores of the kinds a pool worker reads, fed by one informer per kind and namespace."""

    def __init__(
        self,
        api: client.ApiClient,
        namespaces: list[str] | None = None,
        kinds: tuple[Kind, ...] = POOL_KINDS,
    ) -> None:
        self.api = api
        self.namespaces = list(namespaces) if namespaces else None
        self.stores = {k.name: Store(k) for k in kinds}
        self.informers: list[Informer] = []
        self._listeners: list[Listener] = []
        for kind in kinds:
            scopes: list[str | None] = (
                list(self.namespaces) if kind.namespaced and self.namespaces else [None]
            )
            for ns in scopes:
                self.informers.append(Informer(api, kind, ns, self.stores[kind.name], self._notify))

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _notify(self, kind: str, event: str, old: Obj | None, new: Obj | None) -> None:
        for listener in self._listeners:
            listener(kind, event, old, new)

    def start(self) -> None:
        for informer in self.informers:
            informer.start()

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop()

    def list_once(self) -> None:
        """Fill the stores with one list of each kind, without watching (no listener is told)."""
        for informer in self.informers:
            informer.relist()

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Whether every informer has listed once (blocks up to ``timeout`` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for informer in self.informers:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not informer.synced.wait(left):
                return False
        return True

    def unsynced(self) -> list[str]:
        """What has not listed yet, with the last error when there was one."""
        return [
            f"{i.kind.name} in {i.namespace or 'all namespaces'}"
            + (f" ({i.last_error})" if i.last_error else "")
            for i in self.informers
            if not i.synced.is_set()
        ]

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.informers)

    def store(self, kind: str) -> Store:
        return self.stores[kind]
