"""Engine adapters: how the agent loads, unloads and serves shards on one inference engine.

The agent only sees the :class:`Engine` protocol. Two adapters live here:

* ``sim`` holds no data: a load takes ``bytes / bandwidth`` seconds. It lets e2e tests and demos
  run hundreds of shards on a laptop.
* ``reference`` really fetches ``<uri>/shard-<index>`` from ``file://`` or ``http(s)://``, checks
  its size (and sha256 when the assignment carries a digest) and keeps it in memory.

docs/agent.md describes how a Triton-style model-control adapter plugs in.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import aiohttp

from ekko.agent.decide import ShardKey, key_of
from ekko.api.resources import AssignedShard

CHUNK = 1 << 20


class LoadError(Exception):
    """A shard could not be loaded; the message says why, for status.message."""


class Engine(Protocol):
    """What the agent needs from an inference engine."""

    name: str

    async def inventory(self) -> dict[ShardKey, int]:
        """Shards the engine already holds when the agent starts (bytes each)."""
        ...

    async def load(self, shard: AssignedShard) -> int:
        """Load one shard replica and return the bytes it holds; raise LoadError on failure."""
        ...

    async def unload(self, key: ShardKey) -> None:
        """Drop a shard replica; unloading something not loaded is not an error."""
        ...

    async def infer(self, model: str, version: str) -> None:
        """Serve one (simulated) request on a loaded version of a model."""
        ...


class SimEngine:
    """Simulates loads from bytes and bandwidth; holds nothing but the names of its shards."""

    name = "sim"

    def __init__(self, bandwidth: float, infer_latency_ms: float = 1.0) -> None:
        if bandwidth <= 0:
            raise ValueError("bandwidth must be positive")
        self.bandwidth = bandwidth
        self.infer_latency_ms = infer_latency_ms
        self._held: dict[ShardKey, int] = {}

    async def inventory(self) -> dict[ShardKey, int]:
        return {}  # the simulated engine's memory dies with the agent

    async def load(self, shard: AssignedShard) -> int:
        await asyncio.sleep(shard.bytes / self.bandwidth)
        self._held[key_of(shard)] = shard.bytes
        return shard.bytes

    async def unload(self, key: ShardKey) -> None:
        self._held.pop(key, None)

    async def infer(self, model: str, version: str) -> None:
        await asyncio.sleep(self.infer_latency_ms / 1000)


def shard_location(uri: str, index: int) -> str:
    """``<uri>/shard-<index>``, whether or not the URI ends in a slash."""
    return f"{uri.rstrip('/')}/shard-{index}"


def expected_digest(shard: AssignedShard) -> str | None:
    """The shard's sha256 hex digest when the assignment carries one (``sha256:<hex>``)."""
    digest = getattr(shard, "digest", None)  # not in the v1alpha1 AssignedShard yet
    if isinstance(digest, str) and digest.startswith("sha256:"):
        return digest.removeprefix("sha256:")
    return None


def check_shard(shard: AssignedShard, size: int, sha256_hex: str) -> None:
    """Raise LoadError when the fetched data does not match what the assignment says."""
    if size != shard.bytes:
        raise LoadError(f"size mismatch: assignment says {shard.bytes} bytes, found {size}")
    want = expected_digest(shard)
    if want is not None and want != sha256_hex:
        raise LoadError(f"sha256 mismatch: want {want}, got {sha256_hex}")


def _read_file(path: Path, limit: int) -> tuple[bytes, str]:
    digest = hashlib.sha256()
    buf = bytearray()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            buf += chunk
            digest.update(chunk)
            if len(buf) > limit:
                break  # more than assigned: the size check fails without reading it all
    return bytes(buf), digest.hexdigest()


class ReferenceEngine:
    """Loads shard files from file:// or http(s):// and keeps them in memory."""

    name = "reference"

    def __init__(self, infer_latency_ms: float = 1.0, http_timeout: float = 300.0) -> None:
        self.infer_latency_ms = infer_latency_ms
        self.http_timeout = http_timeout
        self._data: dict[ShardKey, bytes] = {}

    async def inventory(self) -> dict[ShardKey, int]:
        return {}

    async def load(self, shard: AssignedShard) -> int:
        location = shard_location(shard.uri, shard.shard)
        parsed = urlparse(location)
        if parsed.scheme == "file":
            data, hexdigest = await self._load_file(Path(unquote(parsed.path)), shard.bytes)
        elif parsed.scheme in ("http", "https"):
            data, hexdigest = await self._load_http(location, shard.bytes)
        else:
            raise LoadError(
                f"the reference engine loads file:// and http(s):// URIs, not {parsed.scheme}://"
            )
        check_shard(shard, len(data), hexdigest)
        self._data[key_of(shard)] = data
        return len(data)

    async def _load_file(self, path: Path, limit: int) -> tuple[bytes, str]:
        try:
            return await asyncio.to_thread(_read_file, path, limit)
        except OSError as err:
            raise LoadError(f"cannot read {path}: {err.strerror or err}") from err

    async def _load_http(self, url: str, limit: int) -> tuple[bytes, str]:
        digest = hashlib.sha256()
        buf = bytearray()
        timeout = aiohttp.ClientTimeout(total=self.http_timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url) as resp,
            ):
                if resp.status != 200:
                    raise LoadError(f"GET {url} returned HTTP {resp.status}")
                async for chunk in resp.content.iter_chunked(CHUNK):
                    buf += chunk
                    digest.update(chunk)
                    if len(buf) > limit:
                        break
        except (aiohttp.ClientError, TimeoutError) as err:
            raise LoadError(f"GET {url} failed: {err or type(err).__name__}") from err
        return bytes(buf), digest.hexdigest()

    async def unload(self, key: ShardKey) -> None:
        self._data.pop(key, None)

    async def infer(self, model: str, version: str) -> None:
        # Touch the data of the version's shards so a request depends on what was loaded.
        total = 0
        for key, data in self._data.items():
            if key.model == model and key.version == version and data:
                total += data[0]
        await asyncio.sleep(self.infer_latency_ms / 1000)


def make_engine(kind: str, *, sim_bandwidth: float) -> Engine:
    if kind == "sim":
        return SimEngine(bandwidth=sim_bandwidth)
    if kind == "reference":
        return ReferenceEngine()
    raise ValueError(f"unknown engine {kind!r}; expected sim or reference")
