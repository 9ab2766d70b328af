"""The bad-input matrix: each case is argv, exit code, a fragment of the one-line message, and
no run folder, lock or temporary file left behind. In-process CLI calls on tiny IDX data."""

import gzip
import shutil

import pytest
import torch
import yaml

from idx_files import write_fashion_mnist
from cli_run import cli

TRAIN = ["train", "lenet", "--data", "{data}", "--limit", "32", "--epochs", "1",
         "--run-dir", "{tmp}/D", "-q", "--set", "val_size=8"]

# id: (extra argv after TRAIN, or a whole argv if it starts with a command; message fragment)
CASES = {
    "batch-size 0": (["--batch-size", "0"], "batch_size must be >= 1"),
    "batch-size -5": (["--batch-size", "-5"], "batch_size must be >= 1"),
    "lr nan": (["--lr", "nan"], "lr must be > 0"),
    "lr -0.1": (["--lr", "-0.1"], "lr must be > 0"),
    "lr inf": (["--lr", "inf"], "lr must be > 0"),
    "limit -1": (["--limit", "-1"], "limit must be >= 1"),
    "epochs 0": (["--epochs", "0"], "epochs must be >= 1"),
    "epochs -1": (["--epochs", "-1"], "epochs must be >= 1"),
    "threads -1": (["--set", "threads=-1"], "threads must be >= 1"),
    "div_factor 0": (["--set", "div_factor=0"], "div_factor must be > 0"),
    "label_smoothing 2": (["--set", "label_smoothing=2"], "label_smoothing must be in [0, 1]"),
    "momentum -1": (["--set", "momentum=-1"], "momentum must be in [0, 1)"),
    "eval_batch_size -5": (["--set", "eval_batch_size=-5"], "eval_batch_size must be >= 1"),
    "betas out of [0, 1)": (["--set", "betas=[0.9, 1.5]"], "betas must be in [0, 1) (each)"),
    "betas of one": (["--set", "betas=[0.9]"], "betas must hold 2 numbers"),
    "weight_decay nan": (["--set", "weight_decay=.nan"], "weight_decay must be >= 0"),
    "pct_start 1": (["--set", "pct_start=1"], "pct_start must be in (0, 1)"),
    "grad_clip 0": (["--set", "grad_clip=0"], "grad_clip must be > 0"),
    "seed -1": (["--set", "seed=-1"], "seed must be >= 0"),
    "val_size -3": (["--set", "val_size=-3"], "val_size must be >= 0"),
    "random_erasing 1.5": (["--set", "random_erasing=1.5"], "random_erasing must be in [0, 1]"),
    "crop_padding -2": (["--set", "crop_padding=-2"], "crop_padding must be >= 0"),
    "lr a word": (["--set", "lr=fast"], "lr must be float"),
    "unknown optimizer": (["--optimizer", "lion"], "optimizer must be one of"),
    "unknown device": (["--device", "tpu"], "device must be one of"),
    "unknown key": (["--set", "epoch=3"], "did you mean epochs"),
    "num_classes 3 on 10 classes": (["-m", "num_classes=3"], "num_classes=3 does not fit"),
    "duplicate YAML key": (["--config", "{tmp}/dup.yaml"], "gives key 'lr' twice"),
    "run-dir under a file": (["--run-dir", "{tmp}/file/D"], "is a file"),
    "run-dir not empty": (["--run-dir", "{tmp}/full"], "never overwritten"),
    "damaged .gz": (["--data", "{tmp}/badgz"], "the file is damaged"),
    "labels out of range": (["--data", "{tmp}/badlabels"], "label 12, outside 0..9"),
    "resume with run-dir": (["train", "--resume", "{run}", "--run-dir", "{tmp}/X"],
                            "does not take --run-dir"),
    "resume with a model": (["train", "lenet", "--resume", "{run}"], "takes the model"),
    "resume nothing": (["train", "--resume", "{tmp}/nothing"], "not a cnnbench run"),
    "resume a truncated checkpoint": (["train", "--resume", "{tmp}/truncated"],
                                      "truncated or damaged"),
    "resume changing lr": (["train", "--resume", "{run}", "--lr", "1"], "lr cannot change"),
    "resume a finished run": (["train", "--resume", "{run}"], "already trained 1 of 1"),
    "resume epochs 0": (["train", "--resume", "{run}", "--epochs", "0"],
                        "epochs must be >= 1"),
    "runs of a damaged yaml": None,  # listed below: runs never fails on a damaged run
}
CASES.pop("runs of a damaged yaml")


@pytest.fixture(scope="module")
def world(tmp_path_factory, fmnist_dir):
    """Data folders (good, damaged .gz, bad labels), a finished run, a truncated one."""
    root = tmp_path_factory.mktemp("world")
    bad = root / "badgz"
    shutil.copytree(fmnist_dir, bad)
    raw = (bad / "train-images-idx3-ubyte.gz").read_bytes()
    (bad / "train-images-idx3-ubyte.gz").write_bytes(raw[:20] + b"\x00" * 40 + raw[60:])
    labels = root / "badlabels"
    write_fashion_mnist(labels, n_train=40, n_test=8)
    data = gzip.decompress((labels / "train-labels-idx1-ubyte.gz").read_bytes())
    data = data[:8] + bytes([12]) + data[9:]
    (labels / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(data))
    (root / "dup.yaml").write_text("model: lenet\nlr: 0.1\nlr: 0.2\n")
    (root / "file").write_text("not a folder")
    (root / "full").mkdir()
    (root / "full" / "notes.txt").write_text("mine")
    threads = torch.get_num_threads()
    argv = [a.format(data=fmnist_dir, tmp=root) for a in TRAIN]
    argv[argv.index(f"{root}/D")] = str(root / "run")
    assert cli(argv) == 0
    shutil.copytree(root / "run", root / "truncated")
    last = root / "truncated" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])
    torch.set_num_threads(threads)
    return root




def with_options(extra: list[str]) -> list[str]:
    """TRAIN with ``extra`` in place of its own options (an option given twice is an error)."""
    keys = {a.split("=")[0] for a in extra if "=" in a}
    argv, rest = TRAIN[:2], iter(TRAIN[2:])
    for arg in rest:
        value = None if arg == "-q" else next(rest)
        if arg not in extra and (value or "").split("=")[0] not in keys:
            argv += [arg] if value is None else [arg, value]
    return argv + extra


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, world, fmnist_dir, capsys,
                                                         monkeypatch, tmp_path):
    extra, fragment = CASES[case]
    monkeypatch.chdir(tmp_path)  # the default runs/ would be made here
    argv = extra if extra[0] == "train" else with_options(extra)
    argv = [a.format(data=fmnist_dir, tmp=world, run=world / "run") for a in argv]
    before = listing(world)
    capsys.readouterr()
    code = cli(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert listing(world) == before and not list(tmp_path.iterdir())


def test_runs_shows_a_damaged_run_with_its_reason_in_strict_json(world, capsys, tmp_path):
    shutil.copytree(world / "run", tmp_path / "broken")
    (tmp_path / "broken" / "config.yaml").write_text("model: [lenet\n")
    shutil.copytree(world / "run", tmp_path / "ok")
    capsys.readouterr()
    assert cli(["runs", "--dir", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out
    rows = {r["run"]: r for r in yaml.safe_load(out)}
    assert "NaN" not in out and "Infinity" not in out
    assert rows["ok"]["status"] == "finished"
    assert rows["broken"]["status"].startswith("damaged: ") and "not valid YAML" in \
        rows["broken"]["status"]
