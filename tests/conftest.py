"""Fixtures shared by several test files."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one torch thread, restoring the previous count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def keep_threads():
    """Restore torch's thread count after a test that sets ``threads``."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory):
    """Tiny synthetic Fashion-MNIST IDX files (96 training, 24 test images): no real data."""
    from idx_files import write_fashion_mnist

    folder = tmp_path_factory.mktemp("fmnist")
    write_fashion_mnist(folder, n_train=96, n_test=24)
    return folder


@pytest.fixture
def scene_cache(tmp_path_factory, monkeypatch):
    """Scenes drawn by a test are cached in the test session's folder, not in ~/.cache."""
    monkeypatch.setenv("CNNBENCH_SCENES_CACHE", str(tmp_path_factory.getbasetemp() / "scenes"))
