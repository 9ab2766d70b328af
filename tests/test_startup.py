"""A run imports only what it uses: a classification run never imports torchvision (whose
``torchvision.ops`` costs seconds of start-up), and traces no graph unless asked."""

import re
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@pytest.mark.cli
def test_a_classification_run_imports_no_torchvision(tmp_path, fmnist_dir):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cnnbench", "train", "lenet", "--epochs", "1",
         "--limit", "96", "-s", f"data={fmnist_dir}", "-s", "val_size=16", "-s", "batch_size=16",
         "--run-dir", str(run), "--quiet"],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")]
    assert "cnnbench.boxes" in imported and "torch" in imported  # the trace is there
    assert [m for m in imported if re.match(r"torchvision(\.|$)", m)] == []
    board = EventAccumulator(str(run / "tensorboard"))
    board.Reload()
    assert "test/misclassified" in board.Tags()["images"]  # drawn all the same
    assert not board.Tags()["graph"]  # not traced unless asked

