"""Command tests run the real CLI (`kimi_local.cli.main`), isolated from the developer's own config file and
KIMI_LOCAL_* variables; sizing tests run on a machine the test describes (`fake_machine`). The tiny checkpoint
fixture comes from tests/conftest.py."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Callable

import pytest

from kimi_local import bandwidth, settings, sizing
from kimi_local.sizing import GiB, GpuInfo, Machine


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """The developer's own kimi-local.toml and KIMI_LOCAL_* variables must not change what a command does here."""
    for var in list(os.environ):
        if var.startswith("KIMI_LOCAL_"):
            monkeypatch.delenv(var)
    monkeypatch.setattr(settings, "default_config_path", lambda: tmp_path / "config" / "kimi-local.toml")


def make_machine(ram_gib: float = 64, available_gib: float | None = None, cores: int = 8,
                 gpus: tuple[GpuInfo, ...] = (), memory_bandwidth: float = 20e9, disk_free_gib: float = 500,
                 disk_bandwidth: float | None = None, gpu_bandwidth: float | None = None) -> Machine:
    return Machine(ram_total=int(ram_gib * GiB), ram_available=int((available_gib or ram_gib) * GiB),
                   physical_cores=cores, logical_cores=2 * cores, gpus=gpus, disk_path="/models",
                   disk_free=int(disk_free_gib * GiB), memory_bandwidth=memory_bandwidth,
                   disk_bandwidth=disk_bandwidth, gpu_bandwidth=gpu_bandwidth)


@pytest.fixture
def fake_machine(monkeypatch) -> Callable[..., Machine]:
    """Installs a described machine: probes return it, bandwidth probes return its figures."""

    def install(**kwargs) -> Machine:
        m = make_machine(**kwargs)
        probed = replace(m, memory_bandwidth=None, disk_bandwidth=None, gpu_bandwidth=None)  # probes add these
        monkeypatch.setattr(sizing, "probe_machine", lambda disk_path=None: probed)
        monkeypatch.setattr(bandwidth, "measure_memory_bandwidth",
                            lambda **_: bandwidth.Bandwidth(m.memory_bandwidth, 1, 1.0, "fake"))
        monkeypatch.setattr(bandwidth, "measure_disk_bandwidth",
                            lambda path, **_: bandwidth.Bandwidth(m.disk_bandwidth or 1e9, 1, 1.0, "fake"))
        monkeypatch.setattr(bandwidth, "measure_gpu_bandwidth",
                            lambda **_: bandwidth.Bandwidth(m.gpu_bandwidth or 1e12, 1, 1.0, "fake"))
        return m

    return install
