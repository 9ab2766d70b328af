"""sweep and train --launcher slurm on a real Slurm on localhost: `.ci/slurm-local.sh start`
(two nodes, each a slurmd of its own on this host).

The tests that submit jobs are skipped, saying so, when no Slurm controller answers here;
the one-line refusals (sbatch missing, the controller down, bad --slurm options) run anyway
where Slurm's client tools are installed."""

import json
import shutil
import subprocess
import sys
import threading
import time

import pytest
import torch

from cli_run import cli
from cnnbench import sweep
from cnnbench import train as trainer
from cnnbench.errors import CnnbenchError
from cnnbench.launchers import get_launcher
from cnnbench.training.runs import read_metrics
from test_distributed import torchrun_env
from test_sweep import tiny

pytestmark = pytest.mark.usefixtures("keep_threads")


def slurm_up() -> bool:
    if shutil.which("sbatch") is None:
        return False
    done = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    return done.returncode == 0 and "UP" in done.stdout


SLURM = pytest.mark.skipif(not slurm_up(), reason="no Slurm controller answers `scontrol "
                                                  "ping` here: start one with "
                                                  "`.ci/slurm-local.sh start` (root)")
# The tests that submit jobs wait for the controller's scheduling passes (a minute or more
# each): slow, and marked slurm; .ci/run runs them with `-m slurm` after starting the cluster.


def point_at_a_dead_controller(tmp_path, monkeypatch):
    """``SLURM_CONF`` naming a cluster whose controller nobody runs."""
    conf = tmp_path / "conf" / "slurm.conf"
    conf.parent.mkdir()
    conf.write_text("ClusterName=gone\nSlurmctldHost=localhost\nSlurmctldPort=9\n"
                    "MessageTimeout=2\nAuthType=auth/munge\nNodeName=localhost\n"
                    "PartitionName=debug Nodes=localhost\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))


def weights(run):
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


@SLURM
@pytest.mark.slow
@pytest.mark.slurm
def test_a_grid_through_slurm_equals_the_local_one_and_reports_a_failed_job(
        tmp_path, fmnist_dir):
    fixed = tiny(fmnist_dir, threads=1, epochs=2)
    grid = {"lr": [0.05, 0.1]}
    lines = []
    slurm = sweep.run_sweep(sweep.spec("lenet", None, fixed, grid, [0]), tmp_path / "slurm",
                            launcher=get_launcher("slurm", 2), say=lines.append)
    local = sweep.run_sweep(sweep.spec("lenet", None, fixed, grid, [0]), tmp_path / "local")
    assert [r["test"] for r in slurm["rows"]] == [r["test"] for r in local["rows"]]
    for name in ("lr=0.05,seed=0", "lr=0.1,seed=0"):
        a, b = weights(tmp_path / "slurm" / name), weights(tmp_path / "local" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise: one thread, same seed
    assert sum("finished (Slurm job" in line for line in lines) == 2, lines
    assert list((tmp_path / "slurm" / "slurm").iterdir())  # submitit's logs

    # A run whose data vanished before its job ran: its log's last line, the others go on.
    data = tmp_path / "data"
    shutil.copytree(fmnist_dir, data)
    bad = sweep.spec("lenet", None, {**fixed, "data": str(data)}, {"lr": [0.05, 0.1]}, [1])
    plan, _, folder = sweep.prepare(bad, tmp_path / "bad")
    sweep.release_run(folder)
    shutil.rmtree(data)
    lines.clear()
    with pytest.raises(CnnbenchError, match=r"2 of 2 runs failed \(lr=0.05,seed=1: failed: "
                                            r".*cnnbench sweep --resume") as info:
        sweep.run_sweep(bad, folder, launcher=get_launcher("slurm", 2), say=lines.append)
    assert "\n" not in str(info.value)
    assert any("failed:" in line and str(data) in line for line in lines), lines


@SLURM
@pytest.mark.slow
@pytest.mark.slurm
def test_scancel_mid_epoch_then_the_same_sweep_resumes_the_runs(tmp_path):
    from idx_files import write_fashion_mnist

    data = tmp_path / "fmnist"
    write_fashion_mnist(data, n_train=3000, n_test=100)
    fixed = tiny(data, threads=1, epochs=3, limit=3000, val_size=100, batch_size=8)
    s = sweep.spec("lenet", None, fixed, {"lr": [0.05]}, [0])
    folder = tmp_path / "sweep"
    run = folder / "lr=0.05,seed=0"
    lines = []

    import threading

    def cancel_after_epoch_1():
        while not (run / "metrics.jsonl").exists():
            time.sleep(0.05)
        time.sleep(0.3)  # into epoch 2
        job = next(line.split("Slurm job ")[1] for line in lines if "Slurm job" in line)
        subprocess.run(["scancel", job.rstrip(")")], check=True)

    watcher = threading.Thread(target=cancel_after_epoch_1, daemon=True)
    watcher.start()
    with pytest.raises(CnnbenchError, match="1 of 1 runs failed"):
        sweep.run_sweep(s, folder, launcher=get_launcher("slurm", 1), say=lines.append)
    watcher.join()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["position"]["batch"] > 0  # stopped mid-epoch 2
    table = sweep.run_sweep(s, folder, launcher=get_launcher("slurm", 1))
    assert table["rows"][0]["finished"] == 1
    local = sweep.run_sweep(s, tmp_path / "local")
    assert table["rows"][0]["test"] == local["rows"][0]["test"]
    a, b = weights(run), weights(tmp_path / "local" / "lr=0.05,seed=0")
    assert all(torch.equal(a[k], b[k]) for k in a)


needs_client = pytest.mark.skipif(shutil.which("scontrol") is None,
                                  reason="Slurm's client tools (scontrol) are not installed")


@pytest.mark.parametrize("case, message", [
    ("no-sbatch", "Slurm is not reachable: sbatch is not on PATH"),
    pytest.param("controller-down", "Slurm's controller is down or unreachable (scontrol "
                                    "ping: ", marks=needs_client),
    pytest.param("bad-option", "bad --slurm options: ", marks=[needs_client, SLURM]),
])
def test_slurm_out_of_reach_is_one_line_before_any_folder(tmp_path, monkeypatch, capsys,
                                                          case, message):
    monkeypatch.chdir(tmp_path)
    options = []
    if case == "no-sbatch":
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    elif case == "controller-down":  # a cluster whose controller nobody runs
        point_at_a_dead_controller(tmp_path, monkeypatch)
    else:
        options = ["--slurm", "partition=debug,gpus_per_nod=1"]
    code = cli(["sweep", "lenet", "--grid", "lr=0.1,0.2", "--epochs", "1", "--launcher",
                "slurm", *options])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["conf"], ["empty"])


@SLURM
@pytest.mark.slow
@pytest.mark.slurm
def test_two_slurm_jobs_share_one_search(tmp_path, fmnist_dir):
    from cnnbench import search

    lines = []
    table = search.run_search(sweep.spec("lenet", None, tiny(fmnist_dir, threads=1), {}, [0]),
                              search.parse_space(["lr=log:1e-3..0.1"]), "random", 4,
                              folder=tmp_path / "search", launcher=get_launcher("slurm", 2),
                              say=lines.append)
    assert sorted(r["trial"] for r in table["rows"]) == [0, 1, 2, 3]
    assert [r["state"] for r in table["rows"]] == ["complete"] * 4
    assert sum("finished (Slurm job" in line for line in lines) == 2, lines  # two workers
    logs = "".join(p.read_text() for p in (tmp_path / "search" / "slurm").rglob("*.out"))
    started = sorted(line.split()[0] for line in logs.splitlines()
                     if line.startswith("trial-") and line.endswith(": training"))
    assert started == ["trial-000", "trial-001", "trial-002", "trial-003"]


# --- one training over several nodes: train --launcher slurm --nnodes N ---

def cluster_nodes() -> int:
    done = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True,
                          timeout=30)
    return len(set(done.stdout.split()))


def two_nodes() -> list[str]:
    """Two nodes of one training: a real two-node job on .ci/slurm-local.sh's cluster (two
    slurmd on this host); on a one-node cluster, the job's two tasks on it act as the nodes
    (the same code: each task is one node, its rank SLURM_PROCID)."""
    packed = [] if cluster_nodes() >= 2 else ["--slurm", "nodes=1,ntasks_per_node=2"]
    return ["--launcher", "slurm", "--nnodes", "2", *packed]


SMALL = ["--batch-size", "8", "--set", "val_size=16", "--set", "threads=1",
         "--set", "log_graph=false", "--set", "log_images=false"]


def same_weights(a, b) -> bool:
    return all(torch.equal(weights(a)[k], weights(b)[k]) for k in weights(a))


@SLURM
@pytest.mark.slow
@pytest.mark.slurm
def test_one_training_over_two_slurm_nodes_equals_nproc_2_on_one(tmp_path, fmnist_dir,
                                                                 monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "none.yaml").write_text("")
    base = ["train", "lenet", "--config", "none.yaml", "--data", str(fmnist_dir), "--limit",
            "96", "--epochs", "2", *SMALL]
    assert cli([*base, "--run-dir", "nodes", *two_nodes(), "--json"]) == 0
    out, err = capsys.readouterr()
    results = json.loads(out)
    assert results["processes"] == 2 and results["run_dir"].endswith("nodes")
    assert "nodes: Slurm job" in err and "nodes: finished (Slurm job" in err, err
    logs = sorted((tmp_path / "slurm").rglob("*_log.out"))  # submitit's, beside the run
    assert len(logs) == 2 and "global_rank=1(2)" in logs[1].read_text()
    done = subprocess.run([sys.executable, "-m", "cnnbench", *base, "--run-dir", "one",
                           "--nproc", "2", "--quiet"], cwd=tmp_path, env=torchrun_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    for key in ("test_loss", "test_acc", "test_top5", "best_val_acc"):
        assert results[key] == pytest.approx(one[key], abs=1e-6), key
    rows = list(zip(read_metrics(tmp_path / "nodes"), read_metrics(tmp_path / "one")))
    assert len(rows) == 2
    for a, b in rows:
        for key, value in b.items():
            if key not in ("epoch_seconds", "images_per_second"):
                assert a[key] == pytest.approx(value, abs=1e-6), key


@SLURM
@pytest.mark.slow
@pytest.mark.slurm
def test_a_training_job_that_fails_is_its_logs_last_line_and_leaves_no_run(tmp_path,
                                                                           fmnist_dir):
    data = tmp_path / "data"
    shutil.copytree(fmnist_dir, data)
    options = {"data": str(data), "limit": 96, "epochs": 1, "batch_size": 8, "threads": 1}
    argv = ["train", "lenet", "--data", str(data), "--limit", "96", "--epochs", "1",
            "--batch-size", "8", "--set", "threads=1"]
    packed = None if cluster_nodes() >= 2 else "nodes=1,ntasks_per_node=2"
    lines = []

    def say(line):  # the data vanish once the job is submitted, before it runs
        lines.append(line)
        if "Slurm job" in line and data.exists():
            shutil.rmtree(data)

    with pytest.raises(CnnbenchError) as info:
        trainer.submit_train(get_launcher("slurm", 1, packed, nnodes=2), 1, argv, "lenet",
                             None, options, run_dir=tmp_path / "run", say=say)
    message = str(info.value)
    assert message.startswith("failed: ") and str(data) in message, message
    assert "\n" not in message and "continue with" not in message  # nothing to resume
    assert not (tmp_path / "run").exists()
    assert any(line.startswith("run: failed: ") for line in lines), lines


@SLURM
@pytest.mark.slow
@pytest.mark.slurm
def test_scancel_mid_epoch_then_resume_through_slurm_ends_bitwise_as_nproc_2(
        tmp_path, monkeypatch, capsys):
    from idx_files import write_fashion_mnist

    monkeypatch.chdir(tmp_path)
    write_fashion_mnist(tmp_path / "fmnist", n_train=3000, n_test=100)
    (tmp_path / "none.yaml").write_text("")
    base = ["train", "lenet", "--config", "none.yaml", "--data", "fmnist", "--limit", "3000",
            "--epochs", "2", "--batch-size", "8", "--set", "val_size=100", "--set", "threads=1",
            "--set", "log_graph=false", "--set", "log_images=false"]
    run = tmp_path / "run"

    def cancel_in_epoch_2():
        while not (run / "metrics.jsonl").exists():
            time.sleep(0.05)
        time.sleep(0.3)
        jobs = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)
        subprocess.run(["scancel", *jobs.stdout.split()], check=True)

    watcher = threading.Thread(target=cancel_in_epoch_2, daemon=True)
    watcher.start()
    assert cli([*base, "--run-dir", "run", *two_nodes()]) == 2
    watcher.join()
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error: stopped, resumable: SIGTERM") and (
        "continue with: cnnbench train --resume run" in err), err
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["position"]["batch"] > 0  # stopped mid-epoch 2
    assert cli(["train", "--resume", "run", *two_nodes()]) == 0
    done = subprocess.run([sys.executable, "-m", "cnnbench", *base, "--run-dir", "one",
                           "--nproc", "2", "--quiet"], cwd=tmp_path, env=torchrun_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]
    assert same_weights(run, tmp_path / "one")  # bitwise, as a local resume is


@SLURM
@pytest.mark.slow
@pytest.mark.slurm
def test_a_sweep_with_nnodes_makes_each_run_a_two_node_job(tmp_path, fmnist_dir, monkeypatch,
                                                          capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "none.yaml").write_text("")
    common = ["--config", "none.yaml", "--data", str(fmnist_dir), "--limit", "96", "--epochs",
              "1", *SMALL]
    assert cli(["sweep", "lenet", "--grid", "lr=0.05", *common, "--dir", "sweep",
                *two_nodes(), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["rows"][0]["finished"] == 1
    run = tmp_path / "sweep" / "lr=0.05,seed=0"
    assert json.loads((run / "results.json").read_text())["processes"] == 2
    done = subprocess.run([sys.executable, "-m", "cnnbench", "train", "lenet", *common,
                           "--lr", "0.05", "--seed", "0", "--run-dir", "one", "--nproc", "2",
                           "--quiet"], cwd=tmp_path, env=torchrun_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert same_weights(run, tmp_path / "one")


@pytest.mark.parametrize("args, message", [
    (["--launcher", "slurm", "--nnodes", "2", "--node-rank", "1"],
     "--launcher slurm gives each node its rank and the rendezvous: leave out --node-rank"),
    (["--launcher", "slurm", "--nnodes", "2", "--rdzv", "node0:29400"],
     "--launcher slurm gives each node its rank and the rendezvous"),
    (["--launcher", "ray", "--nnodes", "2"], "unknown launcher 'ray': use local or slurm"),
    (["--slurm", "partition=gpu"], "--slurm options go with --launcher slurm"),
    (["--launcher", "slurm", "--nnodes", "2", "--slurm", "nodes=3"],
     "--slurm nodes=3,ntasks_per_node=1 is not 2 tasks, one per node of --nnodes 2"),
    (["--launcher", "slurm", "--nnodes", "0"], "--nnodes must be >= 1, not 0"),
    (["--launcher", "slurm", "--nnodes", "2"], "no-sbatch"),
])
def test_train_through_slurm_refuses_bad_options_in_one_line_before_any_folder(
        tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch: checked last
    if message == "no-sbatch":
        message = "Slurm is not reachable: sbatch is not on PATH"
    code = cli(["train", "lenet", "--epochs", "1", "--limit", "32", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not list(tmp_path.iterdir())


@needs_client
def test_train_through_slurm_with_the_controller_down_is_one_line(tmp_path, monkeypatch,
                                                                  capsys):
    monkeypatch.chdir(tmp_path)
    point_at_a_dead_controller(tmp_path, monkeypatch)
    code = cli(["train", "lenet", "--launcher", "slurm", "--nnodes", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "Slurm's controller is down or unreachable" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]


@pytest.mark.parametrize("args, message", [
    (["--nnodes", "2"], "--launcher local runs a training on this machine: --nnodes 2 goes "
                        "with --launcher slurm"),
    (["--nproc", "2"], "--nproc goes with --launcher slurm --nnodes N in a sweep"),
    (["--launcher", "slurm", "--nnodes", "2", "--nproc", "0"], "--nproc must be >= 1, not 0"),
    (["--nnodes", "2", "--launcher", "slurm", "--search", "tpe", "--space", "lr=0.1..0.2",
      "--trials", "2"], "a search's workers train on one node each"),
])
def test_a_sweep_refuses_nnodes_where_it_cannot_use_them(tmp_path, monkeypatch, capsys, args,
                                                         message):
    monkeypatch.chdir(tmp_path)
    grid = [] if "--search" in args else ["--grid", "lr=0.1,0.2"]
    code = cli(["sweep", "lenet", *grid, "--epochs", "1", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not list(tmp_path.iterdir())
