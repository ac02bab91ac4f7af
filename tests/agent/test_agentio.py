"""The agent's watch loop and error conversion, against a fake client (no cluster)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from ekko.kube.agentio import AgentKube
from ekko.kube.errors import ConfigError, KubeError, NotFound


def obj(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv}}


class FakeCustom:
    """Lists and watch streams scripted per call; records the resourceVersions asked for."""

    def __init__(self, lists: list[Any], streams: list[Any], stop: threading.Event) -> None:
        self.lists = lists
        self.streams = streams
        self.stop = stop
        self.watch_versions: list[str | None] = []
        self.patches: list[dict[str, Any]] = []
        self.patch_error: Exception | None = None

    def list_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("watch"):
            raise AssertionError("watch goes through FakeWatch")
        item = self.lists.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def patch_namespaced_custom_object_status(self, *args: Any, **kwargs: Any) -> None:
        if self.patch_error is not None:
            raise self.patch_error
        self.patches.append(args[5])


class FakeWatch:
    custom: FakeCustom

    def stream(self, func: Any, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.custom.watch_versions.append(kwargs.get("resource_version"))
        if not self.custom.streams:
            self.custom.stop.set()
            return
        step = self.custom.streams.pop(0)
        for event in step:
            if isinstance(event, Exception):
                raise event
            yield event

    def stop(self) -> None:
        pass


def make(monkeypatch: pytest.MonkeyPatch, custom: FakeCustom) -> AgentKube:
    kube = AgentKube.__new__(AgentKube)
    kube.namespace, kube.pod_name = "ns", "srv-0"
    kube._custom = custom  # type: ignore[assignment]
    FakeWatch.custom = custom
    monkeypatch.setattr("ekko.kube.agentio.watch.Watch", FakeWatch)
    return kube


def test_watch_relists_after_410_and_resumes_after_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    stop = threading.Event()
    custom = FakeCustom(
        lists=[
            {"metadata": {"resourceVersion": "10"}, "items": [obj("m", "9")]},
            {"metadata": {"resourceVersion": "50"}, "items": [obj("m", "49")]},
        ],
        streams=[
            [
                {"type": "MODIFIED", "object": obj("m", "11")},
                {"type": "BOOKMARK", "object": obj("", "12")},
                OSError("connection reset"),
            ],
            [{"type": "MODIFIED", "object": obj("m", "13")}, ApiException(status=410)],
            [{"type": "DELETED", "object": obj("m", "51")}],
        ],
        stop=stop,
    )
    kube = make(monkeypatch, custom)
    relists: list[list[str]] = []
    events: list[tuple[str, str]] = []
    monkeypatch.setattr(stop, "wait", lambda timeout=None: False)  # no real backoff sleeps
    kube.watch_models(
        lambda items: relists.append([i["metadata"]["resourceVersion"] for i in items]),
        lambda kind, o: events.append((kind, o["metadata"]["resourceVersion"])),
        stop,
    )
    assert relists == [["9"], ["49"]]
    assert events == [("MODIFIED", "11"), ("MODIFIED", "13"), ("DELETED", "51")]
    # Resumed from the bookmark after the broken connection; from the new list after 410.
    assert custom.watch_versions == ["10", "12", "50", "51"]


def test_patch_status_converts_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    custom = FakeCustom([], [], threading.Event())
    kube = make(monkeypatch, custom)
    kube.patch_status({"routing": []})
    assert custom.patches == [{"status": {"routing": []}}]
    custom.patch_error = ApiException(status=404, reason="Not Found")
    with pytest.raises(NotFound):
        kube.patch_status({})
    custom.patch_error = ApiException(status=500, reason="Internal")
    with pytest.raises(KubeError, match="HTTP 500") as err:
        kube.patch_status({})
    assert err.value.status == 500
    custom.patch_error = ConnectionError("refused")
    with pytest.raises(KubeError, match="refused"):
        kube.patch_status({})


def test_missing_kubeconfig_is_a_config_error(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="cannot configure"):
        AgentKube("ns", "srv-0", str(tmp_path / "missing"))
