"""Shared pytest setup: the --runslow flag and paths to ../shared."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COORDSWEEP_SHARED", REPO.parent / "shared"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run the full slow end-to-end tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow (make test-all)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent (../shared is not laid out on this machine)")
    return p


@pytest.fixture(scope="session")
def seed_module():
    """The authors' CA module (../shared/reference/coordatt_seed.py), imported by path."""
    import importlib.util

    path = shared_path("reference", "coordatt_seed.py")
    spec = importlib.util.spec_from_file_location("coordatt_seed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests run with one intra-op thread: tiny CPU ops with 2 OpenMP threads on a busy 2-core
    machine are up to 100x slower (spin-waiting), and one thread keeps results reproducible."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
