"""``ray_cluster.yaml`` against the schema inside the ``ray`` package, and its security."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG = Path(__file__).resolve().parents[2] / "ray_cluster.yaml"
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
RAY_AND_MLFLOW_PORTS = {6379, 8265, 10001, 5000}


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_valid_against_rays_own_schema(config):
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` does


def test_the_schema_check_can_fail(config):
    broken = {**config, "max_workerz": 4}
    with pytest.raises(jsonschema.ValidationError, match="max_workerz"):
        jsonschema.validate(broken, json.loads(SCHEMA.read_text()))


def test_cpu_head_and_autoscaling_gpu_workers(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    gpu = [t for name, t in types.items() if name != config["head_node_type"] and t["resources"].get("GPU")]
    assert gpu and all(0 <= t["min_workers"] < t["max_workers"] for t in gpu)


def test_no_ray_or_mlflow_port_open_to_the_world(config):
    rules = config["provider"]["security_group"]["IpPermissions"]
    for rule in rules:
        ports = set(range(rule["FromPort"], rule["ToPort"] + 1))
        assert not ports & RAY_AND_MLFLOW_PORTS, rule
        assert all(r["CidrIp"] != "0.0.0.0/0" for r in rule.get("IpRanges", [])), rule


def test_token_auth_on_every_node_and_never_in_the_file(config):
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in ray_starts)
    text = CONFIG.read_text()
    assert "RAY_AUTH_TOKEN=" not in text and not re.search(r"\b[0-9a-f]{32,}\b", text)
    assert any("secretsmanager" in c and "auth_token" in c for c in config["setup_commands"])


def test_dashboard_and_mlflow_bound_privately(config):
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    mlflow = next(c for c in config["head_start_ray_commands"] if "--backend-store-uri" in c)
    assert "0.0.0.0" not in mlflow and "--host $(hostname -I" in mlflow
    assert "--backend-store-uri sqlite:" in mlflow  # a SQL backend, not the file store


def test_shared_storage_and_project_install(config):
    setup = " ".join(config["setup_commands"])
    assert "mount -t nfs4" in setup and "/mnt/hpsearch" in setup
    assert "pip install" in setup and "-e /home/ubuntu/hpsearch" in setup
    assert config["file_mounts"]["/home/ubuntu/hpsearch"] == "."
