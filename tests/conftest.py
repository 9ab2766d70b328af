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


@pytest.fixture(scope="session")
def fashion_dir(fmnist_dir):
    """The installed Fashion-MNIST when present (else the tests' small IDX files)."""
    from cnnbench.data import fashion_mnist as fm

    real = fm.DEBIAN_DIR / "t10k-images-idx3-ubyte.gz"
    return str(fm.DEBIAN_DIR if real.is_file() else fmnist_dir)


@pytest.fixture(scope="session")
def lenet_256(tmp_path_factory, fashion_dir):
    """A one-epoch LeNet run on 256 Fashion-MNIST images (export, predict)."""
    from cnnbench.train import train

    root = tmp_path_factory.mktemp("lenet256")
    (root / "none.yaml").write_text("")
    train("lenet", config_file=root / "none.yaml",
          overrides={"limit": 256, "val_size": 64, "batch_size": 32, "epochs": 1,
                     "log_graph": False, "log_images": False, "data": fashion_dir},
          run_dir=root / "run")
    return root / "run"
