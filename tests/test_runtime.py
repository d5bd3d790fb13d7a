"""Ray start-up: a local Ray's dashboard binds 127.0.0.1."""

from __future__ import annotations

import ray
from omegaconf import OmegaConf

from orchestrator.config import ClusterConfig
from orchestrator.runtime import start_ray


def test_local_dashboard_binds_loopback(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    url = start_ray(OmegaConf.structured(ClusterConfig(num_cpus=1, dashboard=True)))
    try:
        assert url and url.startswith("127.0.0.1:"), url
    finally:
        ray.shutdown()


def test_unreachable_address_fails_within_seconds(monkeypatch):
    import time

    import pytest

    from orchestrator.errors import ResourceError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    start = time.monotonic()
    with pytest.raises(ResourceError, match="cannot reach 127.0.0.1:1"):
        start_ray(OmegaConf.structured(ClusterConfig(address="127.0.0.1:1")))
    with pytest.raises(ResourceError, match="expected host:port"):
        start_ray(OmegaConf.structured(ClusterConfig(address="not-an-address")))
    assert time.monotonic() - start < 15
