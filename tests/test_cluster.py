"""cluster.yaml is a config Ray's cluster launcher accepts: checked against Ray's own schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_rays_schema(schema: dict, cluster: dict) -> None:
    jsonschema.validate(cluster, schema)


def test_cluster_yaml_has_a_head_and_autoscaling_gpu_workers(cluster: dict) -> None:
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    assert any(
        t["resources"].get("GPU", 0) >= 1 and t["min_workers"] < t["max_workers"] for t in workers
    )
    setup = " ".join(cluster["setup_commands"])
    assert "germline[vllm]" in setup
    # The dashboard (and so the Jobs API) stays on the head's loopback: reach it through
    # `ray dashboard cluster.yaml`, never an open port.
    assert "--dashboard-host=127.0.0.1" in " ".join(cluster["head_start_ray_commands"])


def test_the_schema_catches_a_broken_config(schema: dict, cluster: dict) -> None:
    broken = {**cluster, "provider": {k: v for k, v in cluster["provider"].items() if k != "type"}}
    with pytest.raises(jsonschema.ValidationError, match="'type' is a required property"):
        jsonschema.validate(broken, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**cluster, "max_workers": "eight"}, schema)
