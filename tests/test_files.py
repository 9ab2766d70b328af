"""The one home for writes (``cnnbench.files``): whole or not at all, only onto a regular file
or a new name, and every failure one line naming the path and the cause.

Real faults, not mocks: a small tmpfs that fills up, a tmpfs remounted read-only, ``ulimit -f``
in a child process, a user without permission, ``/dev/null``. Mounting needs root; those tests
are skipped elsewhere.
"""

import contextlib
import errno
import os
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import cli

from cnnbench import files, plots
from cnnbench.bench.output import write_csv
from cnnbench.data import cache, imagefolder
from cnnbench.errors import CnnbenchError
from cnnbench.files import RunLayout, WriteFailed
from cnnbench.train import resume, train

ROOT = Path(__file__).resolve().parents[1]
FULL = "no space left on the disk"


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def remount(folder: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        yield disk


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name]


def noise_figure():
    """A matplotlib figure of 900x900 noisy pixels (its PNG: about 2 MB)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 9), dpi=100)
    fig.figimage(np.random.default_rng(1).integers(0, 256, (900, 900, 3), np.uint8))
    return fig


WRITERS = {  # each writes ~2 MB of what the tool writes: more than the disk holds
    "text": lambda path: files.write_text(path, "x" * 2_000_000),
    "torch.save": lambda path: files.save_torch({"w": torch.ones(500_000)}, path),
    "figure": lambda path: plots.save_png(noise_figure(), path),
    "table": lambda path: write_csv([{"model": f"m{i}", "ms": i / 7} for i in range(90_000)],
                                    str(path)),
}


@pytest.mark.parametrize("kind", WRITERS)
def test_a_full_disk_is_one_line_naming_the_file_and_the_old_file_stays(small_disk, kind):
    path = small_disk / "out.file"
    path.write_text("the old content")
    with pytest.raises(WriteFailed) as caught:
        WRITERS[kind](path)
    assert str(caught.value) == f"cannot write {path}: {FULL}"  # torch.save's too
    assert caught.value.errno == errno.ENOSPC
    assert path.read_text() == "the old content"
    assert leftovers(small_disk) == []


def test_a_log_line_on_a_full_disk_is_one_line(small_disk):
    log = small_disk / RunLayout.METRICS
    with open(small_disk / "filler", "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
    with pytest.raises(WriteFailed, match=f"^cannot write {log}: {FULL}$"):
        files.append_line(log, "x" * 10_000)


def test_a_read_only_disk_is_refused_before_any_work_and_when_writing(small_disk):
    (small_disk / "kept.json").write_text("{}")
    remount(small_disk, "ro")
    read_only = "the file system is read-only"
    for path in (small_disk / "new.png", small_disk / "kept.json"):
        with pytest.raises(CnnbenchError, match=f"^cannot write --plot {path}: {read_only}$"):
            files.check_file(path, "--plot")  # root's os.access() would say yes
        with pytest.raises(WriteFailed, match=f"^cannot write {path}: {read_only}$"):
            files.write_json(path, {"a": 1})
    with pytest.raises(CnnbenchError, match=f"^cannot write in {small_disk}: {read_only}$"):
        files.check_folder(small_disk / "runs" / "new", "--run-dir")
    assert (small_disk / "kept.json").read_text() == "{}"


def test_resume_on_a_read_only_disk_is_one_line_before_the_data_load(small_disk, capsys):
    run = small_disk / "run"
    run.mkdir()
    RunLayout(run).config.write_text("model: lenet\n")  # its data are never looked for
    remount(small_disk, "ro")
    assert cli(["train", "--resume", run, "--epochs", "3"]) == 2
    assert capsys.readouterr().err == (f"error: cannot write in {run}: the file system is "
                                       f"read-only\n")


def test_a_device_node_is_never_replaced():
    device = "cannot write --plot /dev/null: it is a character device, not a regular file"
    with pytest.raises(CnnbenchError, match=f"^{device}"):
        files.check_file("/dev/null", "--plot")
    with pytest.raises(WriteFailed, match="^cannot write /dev/null: it is a character device"):
        files.write_text("/dev/null", "a picture")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.parametrize("argv", [
    ["runs", "--compare", "no-run", "nor-this", "--plot"],
    ["receptive-field", "lenet", "--erf"],
    ["lr-find", "lenet", "--plot"],
    ["bench", "lenet", "--plot"],
    ["bench", "lenet", "--csv"],
    ["bench", "lenet", "--json-file"],
])
def test_every_picture_and_table_option_refuses_a_device_before_any_work(argv, capsys):
    """Before any work: the runs to compare are not even looked up, nothing is measured."""
    assert cli([*argv, "/dev/null"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: cannot write {argv[-1]} /dev/null: it is a character device, not a "
                   f"regular file (cnnbench writes files whole, by renaming: give a file name)\n")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_link_is_followed_and_stays_a_link(tmp_path):
    target, link = tmp_path / "table.csv", tmp_path / "link.csv"
    target.write_text("old")
    link.symlink_to(target)
    write_csv([{"model": "lenet", "ms": 1.5}], str(link))
    assert link.is_symlink() and target.read_bytes() == b"model,ms\r\nlenet,1.5\r\n"


def test_the_file_size_limit_is_one_line_not_a_killed_process(tmp_path):
    """``ulimit -f``: without SIGXFSZ ignored the process dies of the signal, silently."""
    path = tmp_path / "state.pt"
    script = ("import sys, torch; from cnnbench import files\n"
              "try: files.save_torch({'w': torch.ones(100_000)}, sys.argv[1])\n"
              "except files.WriteFailed as exc: sys.exit(str(exc))\n")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, preexec_fn=limit, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr == f"cannot write {path}: the file size limit is reached (ulimit -f)\n"
    assert not path.exists() and leftovers(tmp_path) == []


def test_no_permission_is_one_line(tmp_path):
    """Root without its capabilities (``setpriv``) in another user's folder."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv, to write without the right to")
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o755)
    os.chown(folder, 65534, 65534)
    path = folder / "out.txt"
    script = ("import sys; from cnnbench import files\n"
              "try: files.check_file(sys.argv[1])\n"
              "except files.CnnbenchError as exc: print(exc)\n"
              "try: files.write_text(sys.argv[1], 'x')\n"
              "except files.WriteFailed as exc: print(exc)\n")
    done = subprocess.run(["setpriv", "--bounding-set", "-all", "--inh-caps", "-all",
                           sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout == f"cannot write {path}: permission denied\n" * 2, done.stderr[-2000:]
    assert not path.exists()


def test_a_full_disk_while_training_says_how_to_continue_and_the_run_resumes(
        tmp_path, fmnist_dir, keep_threads, capsys):
    (tmp_path / "none.yaml").write_text("")
    overrides = {"data": str(fmnist_dir), "limit": 64, "val_size": 16, "batch_size": 16,
                 "epochs": 2, "log_graph": False, "log_images": False}
    with tmpfs(tmp_path / "disk", "700k") as disk:  # room for 2 checkpoints, not 3
        run = disk / "run"
        with pytest.raises(WriteFailed) as caught:
            train("lenet", tmp_path / "none.yaml", overrides, run_dir=run)
        assert str(caught.value) == (
            f"cannot write {RunLayout(run).last}: {FULL}; the last checkpoint is kept: free "
            f"some space, then continue with: cnnbench train --resume {run}")
        assert torch.load(RunLayout(run).last, weights_only=True)["epoch"] == 1
        assert leftovers(run) == []
        remount(disk, "size=8m")
        assert resume(run)["epochs"] == 2
        assert RunLayout(run).metrics.read_text().count("\n") == 2


def test_a_cache_that_cannot_be_written_costs_only_speed(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from cnnbench import recipe
    from cnnbench.data.sources import load_data
    from cnnbench.tasks.classification import Classification

    for split, name in (("train", "cat"), ("train", "dog"), ("test", "cat"), ("test", "dog")):
        (tmp_path / "tree" / split / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(
                tmp_path / "tree" / split / name / f"{i}.png")
    monkeypatch.setattr(imagefolder, "CACHE_FROM", 0)
    monkeypatch.setattr(cache, "_warned", False)
    config = recipe.resolve("lenet", None, {"data": str(tmp_path / "tree"), "val_size": 0})
    with tmpfs(tmp_path / "cache", "1m") as folder:
        remount(folder, "ro")
        monkeypatch.setenv("CNNBENCH_CACHE", str(folder))
        first = load_data(dict(config), Classification)
        second = load_data(dict(config), Classification)
    assert torch.equal(first.train.images, second.train.images) and len(first.train) == 4
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and said[0].startswith(f"warning: cannot write {folder}/")
    assert "the file system is read-only; the data are not cached" in said[0]
