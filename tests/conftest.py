"""Shared pytest options: ``--device cuda`` runs the package tests on a GPU (default: cpu)."""
import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="torch device for package tests: cpu (default) or cuda")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("--device cuda given but CUDA is not available")
    return torch.device(name)
