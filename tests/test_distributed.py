"""Distributed data parallel: two gloo processes on the CPU train as one, write one run folder,
and resume with another number of processes."""

import io
import json
import os
import subprocess
import sys
import time
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch

from cnnbench import cli
from cnnbench.checkpoints import load_checkpoint
from cnnbench.errors import CnnbenchError
from cnnbench.training import distributed
from cnnbench.training.build import build_trainer
from cnnbench.train import resume, train
from cnnbench.files import RunLayout
from cnnbench.training.runs import read_metrics

TESTS = Path(__file__).parent
# 81 training images (one left out per epoch: 40 per process), 15 validation images (parts of
# 7 and 8), 24 test images; evaluation batches of 5 so the parts end in uneven batches.
SMALL = dict(limit=96, val_size=15, batch_size=8, eval_batch_size=5, epochs=1, optimizer="sgd",
             lr=0.05, momentum=0.9, schedule="onecycle", crop_padding=2, hflip=True,
             log_graph=False, log_images=False, threads=1)


@pytest.fixture
def recipe(tmp_path):
    (tmp_path / "none.yaml").write_text("")
    return tmp_path / "none.yaml"


def torchrun_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent)}


def exit_codes(folder: Path) -> list[int]:
    """Each process's exit code, as ``tests/ddp_worker.py`` wrote them."""
    return [int((folder / f"exit{r}").read_text()) for r in range(2)]


def single_process_evaluation(run: Path) -> tuple[dict, dict]:
    """Validation metrics of ``last.pt``'s weights and test metrics of ``best.pt``'s (what the
    test pass at the end of training measures), evaluated by one process."""
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    trainer = build_trainer(state["config"], callbacks=[], checkpoint=state)
    val = trainer.evaluate(trainer.val_split)[0]
    trainer.model.load_state_dict(load_checkpoint(run / "checkpoints" / "best.pt")["model"])
    return val, trainer.evaluate(trainer.test_split)[0]


def assert_same_metrics(distributed_metrics: dict, single: dict, prefix: str) -> None:
    for name, value in single.items():
        # Counts (accuracy) add up exactly; the loss sums in another order.
        assert distributed_metrics[f"{prefix}{name}"] == pytest.approx(value, rel=1e-6, abs=1e-7)


def test_each_process_takes_an_equal_disjoint_share_of_the_same_permutation():
    order = torch.randperm(81, generator=torch.Generator().manual_seed(0))
    shares = [distributed.shard(order, r, 2) for r in range(2)]
    assert [len(s) for s in shares] == [40, 40]
    assert sorted(torch.cat(shares).tolist()) == sorted(order[:80].tolist())
    parts = [distributed.part(15, r, 2) for r in range(2)]
    assert [(p.start, p.stop) for p in parts] == [(0, 7), (7, 15)]


def test_resume_of_a_one_process_run_on_two_keeps_the_weights_equal_on_both(
        tmp_path, fmnist_dir, recipe):
    run = tmp_path / "run"
    train("lenet-bn", recipe, {**SMALL, "data": str(fmnist_dir)}, run_dir=run)
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(TESTS / "ddp_worker.py"), "record", str(run), "2", str(out)],
        cwd=tmp_path, env=torchrun_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    # 40 images a step of 8 on each process: 5 steps, weights equal after every one.
    assert [r["images"] for r in ranks] == [40, 40] and len(ranks[0]["steps"]) == 5
    assert torch.equal(ranks[0]["steps"], ranks[1]["steps"])
    for key, value in ranks[0]["state"].items():  # batch-norm buffers too (rank 0's)
        assert torch.equal(value, ranks[1]["state"][key]), key
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["processes"] == 2 and state["epoch"] == 2
    assert all(torch.equal(v, state["model"][k]) for k, v in ranks[0]["state"].items())
    assert not any(k.startswith("module.") for k in state["model"])

    results = json.loads((run / "results.json").read_text())
    assert results["processes"] == 2 and results["epochs"] == 2
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["none.yaml", "out", "run"]
    val, test = single_process_evaluation(run)
    assert_same_metrics(read_metrics(run)[-1], val, "val_")
    assert_same_metrics(results, test, "test_")
    assert ranks[1]["results"]["test_acc"] == results["test_acc"]


def test_two_processes_test_the_weights_of_best_pt(tmp_path, fmnist_dir, recipe):
    run = tmp_path / "run"
    train("lenet", recipe, {**SMALL, "data": str(fmnist_dir)}, run_dir=run)  # best.pt: epoch 1
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(TESTS / "ddp_worker.py"), "record", str(run), "3", str(out), "first-best"],
        cwd=tmp_path, env=torchrun_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 3 and (results["test_checkpoint"], results["test_epoch"]) == (
        "best", 1)
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == 1
    for rank in range(2):  # rank 0 loaded best.pt and sent its weights to rank 1
        state = torch.load(out / f"rank{rank}.pt", weights_only=False)
        assert all(torch.equal(v, best["model"][k]) for k, v in state["state"].items())
        assert state["results"]["test_acc"] == results["test_acc"]
    _, test = single_process_evaluation(run)
    assert_same_metrics(results, test, "test_")


def test_nproc_launches_two_processes_that_write_one_run_and_print_once(
        tmp_path, fmnist_dir, recipe):
    options = [f"--set={k}={v}" for k, v in SMALL.items() if k not in ("epochs", "limit")]
    done = subprocess.run(
        [sys.executable, "-m", "cnnbench", "train", "lenet", "--nproc", "2", "--config",
         str(recipe), "--data", str(fmnist_dir), "--limit", "96", "--epochs", "1",
         "--run-dir", "cli", "--json", "--quiet", *options],
        cwd=tmp_path, env=torchrun_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout)  # one JSON document: only rank 0 prints
    assert printed["processes"] == 2 and printed["run_dir"] == "cli"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli", "none.yaml"]
    assert done.stderr.count("training lenet") == 1 and "Traceback" not in done.stderr
    _, test = single_process_evaluation(tmp_path / "cli")
    assert_same_metrics(printed, test, "test_")

    # The run goes on in one process: the schedule continues from the epoch boundary.
    results = resume(tmp_path / "cli", {"epochs": 2})
    assert results["epochs"] == 2 and "processes" not in results
    assert [row["epoch"] for row in read_metrics(tmp_path / "cli")] == [1, 2]


def test_ctrl_c_in_one_process_stops_both_after_the_same_step_and_resumes_bitwise(
        tmp_path, fmnist_dir, recipe):
    options = [f"--set={k}={v}" for k, v in SMALL.items() if k not in ("epochs", "limit")]
    common = ["--config", str(recipe), "--data", str(fmnist_dir), "--limit", "96", "--epochs",
              "2", "--quiet", *options]
    # One launch trains "straight", then "cut", where process 1 alone gets SIGINT after step 3
    # of 5; the processes agree every 2 steps, so both stop after step 4.
    cut = subprocess.run(
        [sys.executable, str(TESTS / "ddp_worker.py"), "interrupt", "1", "3", "train", "lenet",
         *common], cwd=tmp_path, env=torchrun_env(), capture_output=True, text=True,
        timeout=300)
    assert cut.returncode == 130, cut.stderr[-2000:]
    assert exit_codes(tmp_path) == [130, 130]
    assert (tmp_path / "straight" / "results.json").is_file()
    assert cut.stderr.count("SIGINT: stopped in epoch 1 after step 4 of 5, checkpoint "
                            "written; continue with: cnnbench train --resume cut --nproc 2") == 1
    assert "Traceback" not in cut.stderr and "error:" not in cut.stderr
    state = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert state["epoch"] == 0 and state["processes"] == 2
    assert state["position"]["batch"] == 4 and len(state["position"]["ranks"]) == 2

    resumed = subprocess.run(
        [sys.executable, "-m", "cnnbench", "train", "--resume", "cut", "--nproc", "2",
         "--quiet"], cwd=tmp_path, env=torchrun_env(), capture_output=True, text=True,
        timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("straight", "cut"))
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():  # both processes' augmentation went on where it was
        assert torch.equal(value, b["model"][key]), key
    timing = {"epoch_seconds", "images_per_second"}
    rows = [[{k: v for k, v in row.items() if k not in timing} for row in read_metrics(
        tmp_path / r)] for r in ("straight", "cut")]
    assert rows[0] == rows[1]  # the training sums of both processes were kept too


def test_resume_of_a_run_locked_by_a_live_process_is_one_line_and_exit_2(
        tmp_path, fmnist_dir, recipe):
    run = tmp_path / "run"
    train("lenet", recipe, {**SMALL, "data": str(fmnist_dir)}, run_dir=run)
    RunLayout(run).lock.write_text(f"{os.getpid()}\n")  # this test's process: alive
    done = subprocess.run(  # cnnbench train --resume run --epochs 2 --nproc 2
        [sys.executable, str(TESTS / "ddp_worker.py"), "cli", "train", "--resume", "run",
         "--epochs", "2"], cwd=tmp_path, env=torchrun_env(), capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 2 and exit_codes(tmp_path) == [2, 2]  # not left waiting
    assert done.stderr == (f"error: run is in use by another run (process {os.getpid()}); "
                           f"wait for it or choose another --run-dir\n")
    assert RunLayout(run).lock.read_text() == f"{os.getpid()}\n"
    assert [row["epoch"] for row in read_metrics(run)] == [1]


def test_an_error_in_process_1_alone_is_its_own_one_line_naming_the_process(tmp_path):
    """Rank 0 prints for everyone, but when process 1 fails alone its reason still reaches the
    user: one line, its message, which process; exit 2, the other process stopped."""
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(TESTS / "ddp_worker.py"), "alone", "1", "train", "lenet",
         "--epochs", "0"], cwd=tmp_path, env=torchrun_env(), capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "epochs" in done.stderr and done.stderr.endswith(" (process 1 of 2)\n")
    assert time.monotonic() - t0 < 50  # rank 0 was stopped, not waited for


def test_the_launcher_prints_one_line_for_any_failure():
    from cnnbench.training.distributed import _failed

    def line(codes, said):
        err = io.StringIO()
        with redirect_stderr(err):
            code = _failed(codes, said, 4)
        return code, err.getvalue()

    assert line({0: 2, 1: 2}, {0: "bad", 1: "bad"}) == (2, "error: bad\n")
    assert line({0: -15, 2: 2}, {2: "no GPU"}) == (2, "error: no GPU (process 2 of 4)\n")
    assert line({0: 1}, {}) == (1, "")  # rank 0 printed its own traceback
    assert line({0: 130, 1: 130}, {}) == (130, "")  # stopped on Ctrl-C: rank 0 said so
    assert line({0: -15, 3: 1}, {}) == (1, "error: process 3 of 4 exited with code 1\n")


@pytest.mark.parametrize("argv, message", [
    (["--nproc", "0"], "--nproc must be >= 1"),
    (["--nproc", "2", "--device", "cpu", "--set", "sync_batchnorm=true"],
     "sync_batchnorm needs CUDA"),
    (["--nproc", str(torch.cuda.device_count() + 1), "--device", "cuda"], "a GPU per process"),
])
def test_bad_nproc_is_one_line_before_any_folder(tmp_path, recipe, monkeypatch, capsys, argv,
                                                  message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cnnbench", "train", "lenet", "--config", str(recipe),
                                      "--run-dir", "run", *argv])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["none.yaml"]


def test_nproc_strips_only_itself_from_the_command_line():
    argv = ["train", "lenet", "--nproc", "2", "--epochs", "3", "--nproc=4", "-q"]
    assert distributed.without_nproc(argv) == ["train", "lenet", "--epochs", "3", "-q"]
    argv = ["train", "lenet", "--nnodes", "2", "--node-rank=1", "--rdzv", "h:1", "-q",
            "--rdzv-timeout", "5"]
    assert distributed.without_nproc(argv) == ["train", "lenet", "-q"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("argv, message", [
    (["--nnodes", "2", "--node-rank", "2", "--rdzv", "localhost:29400"],
     "--node-rank 2 is not a node of --nnodes 2: give 0 to 1"),
    (["--nnodes", "2", "--node-rank", "-1", "--rdzv", "localhost:29400"],
     "--node-rank -1 is not a node"),
    (["--nnodes", "2", "--node-rank", "1"], "--nnodes needs --rdzv HOST:PORT"),
    (["--nnodes", "2", "--rdzv", "localhost"], "bad --rdzv 'localhost': use HOST:PORT"),
    (["--nnodes", "0", "--rdzv", "localhost:1"], "--nnodes must be >= 1"),
    (["--node-rank", "1"], "--node-rank and --rdzv go with --nnodes N"),
    (["--nnodes", "2", "--node-rank", "1", "--rdzv", "localhost:PORT", "--rdzv-timeout", "2"],
     "the rendezvous at localhost:{port} did not answer within 2 s"),
])
def test_bad_nodes_are_one_line_before_any_folder(tmp_path, recipe, monkeypatch, capsys, argv,
                                                   message):
    port = str(free_port())  # nothing listens there
    argv = [a.replace("PORT", port) for a in argv]
    message = message.replace("{port}", port)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cnnbench", "train", "lenet", "--config", str(recipe),
                                      "--run-dir", "run", *argv])
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert message in err
    assert time.perf_counter() - t0 < 30  # a time-out, not a hang
    assert sorted(p.name for p in tmp_path.iterdir()) == ["none.yaml"]


@pytest.mark.cli
@pytest.mark.slow  # seven interpreters with torch: 30 s on an idle 2-core machine, more if busy
def test_two_nodes_of_one_process_train_as_nproc_2_does(tmp_path, fmnist_dir, recipe):
    """Two "nodes" on localhost (c10d rendezvous, gloo) against --nproc 2 on one node."""
    options = [f"--set={k}={v}" for k, v in SMALL.items() if k not in ("epochs", "limit")]
    base = [sys.executable, "-m", "cnnbench", "train", "lenet", "--config", str(recipe),
            "--data", str(fmnist_dir), "--limit", "96", "--epochs", "2", "--quiet", *options]
    rdzv = f"localhost:{free_port()}"
    nodes = [subprocess.Popen([*base, "--run-dir", "nodes", "--nnodes", "2", "--node-rank",
                               str(r), "--rdzv", rdzv, "--rdzv-timeout", "60"],
                              cwd=tmp_path, env=torchrun_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (1, 0)]
    outs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [o[1][-2000:] for o in outs]
    done = subprocess.run([*base, "--run-dir", "one", "--nproc", "2"], cwd=tmp_path,
                          env=torchrun_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("nodes", "one"))
    assert a["processes"] == b["processes"] == 2
    for key in ("test_loss", "test_acc", "test_top5", "best_val_acc"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    for row_a, row_b in zip(read_metrics(tmp_path / "nodes"), read_metrics(tmp_path / "one")):
        for key, value in row_b.items():
            if key not in ("epoch_seconds", "images_per_second"):
                assert row_a[key] == pytest.approx(value, abs=1e-6), key
    assert sum((o[0] + o[1]).count("training lenet") for o in outs) == 1  # one process prints


def test_sync_batchnorm_is_refused_on_the_cpu_in_a_launched_process(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(CnnbenchError, match="sync_batchnorm needs CUDA"):
        distributed.prepare_model(torch.nn.BatchNorm2d(3), {"sync_batchnorm": True},
                                  torch.device("cpu"))
