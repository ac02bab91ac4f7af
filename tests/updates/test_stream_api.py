"""The UpdateStream kind and the update duties of a ServerAssignment parse, default and
round-trip as the operator and the agent use them."""

from __future__ import annotations

from ekko.api.resources import ServerAssignment, UpdateStream, parse_resource
from ekko.api.validate import check_manifest

STREAM = {
    "apiVersion": "ekko.dev/v1alpha1",
    "kind": "UpdateStream",
    "metadata": {"name": "ranker", "namespace": "default"},
    "spec": {
        "model": "ranker",
        "source": {"endpoints": ["http://trainer:9500"], "region": "train"},
        "tables": [
            {"name": "ranker.user", "dim": 17},
            {"name": "ranker.dense", "kind": "Dense", "dim": 1, "chunkSize": 4096},
        ],
        "bandwidth": {
            "wan": "2Mi",
            "overrides": [{"fromRegion": "train", "toRegion": "eu", "rate": "500Ki"}],
        },
    },
}


def test_stream_parses_with_defaults() -> None:
    assert check_manifest(STREAM) == []
    stream = parse_resource(STREAM)
    assert isinstance(stream, UpdateStream)
    spec = stream.spec
    assert spec.key_mapping == "Replicated" and not spec.paused
    assert spec.topology.leader_per_region and spec.topology.idle_pull_interval == "10s"
    assert spec.priority.policy == "Ekko" and spec.priority.high_percentile == 90
    assert (spec.compression.values, spec.compression.codec) == ("Float16", "Zstd")
    assert stream.status is None


def test_assignment_carries_update_duties_and_the_agents_address() -> None:
    sa = ServerAssignment.model_validate(
        {
            "apiVersion": "ekko.dev/v1alpha1",
            "kind": "ServerAssignment",
            "metadata": {"name": "pool-0", "namespace": "default"},
            "spec": {
                "pool": "pool",
                "server": "pool-0",
                "updates": [
                    {
                        "model": "ranker",
                        "stream": "ranker",
                        "region": "eu",
                        "role": "Follower",
                        "upstreams": [
                            {"url": "http://10.0.0.7:9500", "server": "pool-3", "region": "eu"}
                        ],
                    }
                ],
            },
            "status": {"updateAddress": "http://10.0.0.5:9500"},
        }
    )
    duty = sa.spec.updates[0]
    assert duty.role == "Follower" and duty.upstreams[0].bandwidth == 0
    assert sa.status is not None and sa.status.update_address == "http://10.0.0.5:9500"
    wire = sa.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert wire["spec"]["updates"][0]["idlePullSeconds"] == 10
