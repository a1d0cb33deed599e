"""Shared pytest options and fixtures: ``--device cuda`` runs the package tests on a GPU (default: cpu);
``one_thread`` runs a module's tests with torch on one thread."""
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


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for the module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    for tiny models one thread beats two that wait on each other, and on a busy CI machine by far."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
