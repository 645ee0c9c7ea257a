"""Fixtures shared by the integration tests."""

import pytest
import ray


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray on 127.0.0.1 with 2 CPUs for one test module, shut down after it."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()
