"""Faults: a process killed at every write of an epoch's end, damaged files of each kind the tool
reads, unreadable and looping paths, and a property test over recipe values and ``--set``
strings. Every case ends in exit 0, or exit 2 with one line and no traceback."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_run import cli
from cnnbench.checkpoints import load_checkpoint
from cnnbench.errors import CnnbenchError

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"epoch_seconds", "images_per_second", "started", "finished", "test_seconds",
          "train_seconds", "minutes", "run_dir"}


def train_argv(data, run_dir) -> list[str]:
    return ["train", "lenet", "--data", str(data), "--limit", "48", "--epochs", "2",
            "--run-dir", str(run_dir), "-q", "--set", "val_size=16", "--set", "threads=1",
            "--set", "log_graph=false"]


def killed_run(name: str, n: int, mode: str, data, run_dir) -> int:
    """``cnnbench train`` in its own process, killed right after the ``n``th write of ``name``."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    return subprocess.run([sys.executable, str(ROOT / "tests" / "kill_at_write.py"), name,
                           str(n), mode, *train_argv(data, run_dir)], env=env,
                          capture_output=True, text=True, timeout=300).returncode


def without_timing(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING}


def folder_facts(run: Path) -> dict:
    """What must not depend on a kill: the log and the results without their clocks, and the
    weights and epochs of both checkpoints."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    facts = {"rows": [without_timing(r) for r in rows],
             "results": without_timing(json.loads((run / "results.json").read_text()))}
    for name in ("last", "best"):
        state = load_checkpoint(run / "checkpoints" / f"{name}.pt")
        facts[name] = (state["epoch"], {k: v.clone() for k, v in state["model"].items()})
    return facts


def assert_same_facts(got: dict, want: dict) -> None:
    assert got["rows"] == want["rows"]
    assert got["results"] == want["results"]
    for name in ("last", "best"):
        assert got[name][0] == want[name][0]
        assert all(torch.equal(got[name][1][k], v) for k, v in want[name][1].items())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, fmnist_dir):
    run = tmp_path_factory.mktemp("reference") / "run"
    assert killed_run("-", 0, "after", fmnist_dir, run) == 0
    return folder_facts(run)


# (file, its Nth write, mode): every write of a 2-epoch run's epoch ends and its results.
KILL_POINTS = [("last.pt", 1, "after"), ("best.pt", 1, "after"), ("metrics.jsonl", 1, "torn"),
               ("metrics.jsonl", 1, "after"), ("last.pt", 2, "after"),
               ("metrics.jsonl", 2, "torn"), ("metrics.jsonl", 2, "after"),
               ("results.json", 1, "after")]


@pytest.mark.parametrize("name,n,mode", KILL_POINTS,
                         ids=[f"{m}-{name}-{n}" for name, n, m in KILL_POINTS])
def test_a_run_killed_at_any_write_resumes_to_the_uninterrupted_folder(
        name, n, mode, uninterrupted, fmnist_dir, tmp_path, keep_threads, capsys):
    run = tmp_path / "run"
    assert killed_run(name, n, mode, fmnist_dir, run) == 137
    code = cli(["train", "--resume", run, "-q"])
    err = capsys.readouterr().err
    if name == "results.json":  # nothing was lost: the run is complete
        assert code == 2 and "already trained 2 of 2" in err, err
    else:
        assert code == 0, err
    assert_same_facts(folder_facts(run), uninterrupted)


# --- the battery: every family of bad input the issue names, through the command line ------
# A case is (argv, the exit code) with {data}, {w} (the world folder) and {run} (a finished run)
# filled in; exit 2 must be one line naming the problem, exit 0 a command that worked.

BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi")) + "model: lenet\n"
DRY = ["train", "--dry-run", "--config"]
FAMILIES = {
    "recipe file": {
        "UTF-16 with its BOM": (DRY + ["{w}/utf16.yaml"], 0),
        "UTF-8 with a BOM": (DRY + ["{w}/utf8bom.yaml"], 0),
        "UTF-16 without a BOM": (DRY + ["{w}/utf16le.yaml"], 2),
        "Latin-1 bytes": (DRY + ["{w}/latin1.yaml"], 2),
        "random bytes": (DRY + ["{w}/random.yaml"], 2),
        "lists 5,000 deep": (DRY + ["{w}/deep.yaml"], 2),
        "mappings 40 deep": (DRY + ["{w}/deepmap.yaml"], 2),
        "billion laughs (aliases)": (DRY + ["{w}/laughs.yaml"], 2),
        "200 KB of text": (DRY + ["{w}/big.yaml"], 2),
        "endless (/dev/zero)": (DRY + ["/dev/zero"], 2),
        "a FIFO": (DRY + ["{w}/fifo.yaml"], 2),
        "a folder": (DRY + ["{w}"], 2),
        "a dangling link": (DRY + ["{w}/dangling.yaml"], 2),
        "a looping link": (DRY + ["{w}/loop.yaml"], 2),
        "model a list": (DRY + ["{w}/model_list.yaml"], 2),
        "model null": (DRY + ["{w}/model_null.yaml"], 2),
        "model a number": (DRY + ["{w}/model_number.yaml"], 2),
        "task a list": (DRY + ["{w}/task_list.yaml"], 2),
        "a number as a key": (DRY + ["{w}/number_key.yaml"], 2),
        "a list as a key": (DRY + ["{w}/list_key.yaml"], 2),
        "a list at the top": (DRY + ["{w}/top_list.yaml"], 2),
        "lr null": (DRY + ["{w}/lr_null.yaml"], 2),
        "model_args a number": (DRY + ["{w}/model_args_number.yaml"], 2),
        "input_size a mapping": (DRY + ["{w}/input_size_map.yaml"], 2),
        "cuda block a number": (DRY + ["{w}/cuda_number.yaml"], 2),
        "a python tag": (DRY + ["{w}/python_tag.yaml"], 2),
        "a date as lr": (DRY + ["{w}/date_lr.yaml"], 2),
    },
    "--set/--grid/--model-arg": {
        "an alias in --set": (["train", "lenet", "--dry-run", "--set",
                               "betas=[&a 0.9, *a]"], 2),
        "aliases in --model-arg": (["train", "lenet", "--dry-run", "-m",
                                    "x=" + BILLION_LAUGHS.replace("\n", ", ").join("{}")], 2),
        "a 200 KB value": (["train", "lenet", "--dry-run", "--set", "lr=" + "9" * 200_000], 2),
        "lists 2,000 deep": (["train", "lenet", "--dry-run", "--set",
                              "betas=" + "[" * 2000 + "]" * 2000], 2),
        "seed past 64 bits": (["train", "lenet", "--dry-run", "--set", "seed=" + "9" * 30], 2),
        "seed 1e30": (["train", "lenet", "--dry-run", "--set", "seed=1e30"], 2),
        "seed 2**63": (["train", "lenet", "--dry-run", "--set", f"seed={2**63}"], 2),
        "seed 2**63 - 1": (["train", "lenet", "--dry-run", "--set", f"seed={2**63 - 1}"], 0),
        "mixup 1e400": (["train", "lenet", "--dry-run", "--set", "mixup=1e400"], 2),
        "mixup 10**400": (["train", "lenet", "--dry-run", "--set", "mixup=1" + "0" * 400], 2),
        "lr_mult past 1e308": (["train", "lenet", "--dry-run", "--set",
                                "lr_mult=[1e309]"], 2),
        "epochs past 64 bits": (["train", "lenet", "--dry-run", "--epochs", "9" * 25], 2),
        "a python tag in --set": (["train", "lenet", "--dry-run", "--set",
                                   "lr=!!python/object/apply:os.system [ls]"], 2),
        "no key": (["train", "lenet", "--dry-run", "--set", "=5"], 2),
        "no =": (["train", "lenet", "--dry-run", "--set", "lr"], 2),
        "a number as --set key": (["train", "lenet", "--dry-run", "--set", "5=5"], 2),
        "a grid of 10,000 runs": (["sweep", "lenet", "--grid", "lr=" + ",".join(
            f"{0.001 * (i + 1):.3f}" for i in range(100)), "--grid", "momentum=" + ",".join(
            f"0.{i:03d}" for i in range(100)), "--dir", "{w}/sweep"], 2),
        "a grid of 10**12 runs": (["sweep", "lenet", *[a for k in range(6) for a in (
            "--grid", f"k{k}=" + ",".join(str(i) for i in range(100)))], "--dir",
            "{w}/sweep"], 2),
        "bench --min-run-time inf": (["bench", "lenet", "--min-run-time", "inf"], 2),
        "bench --min-run-time nan": (["bench", "lenet", "--min-run-time", "nan"], 2),
        "bench deformconv --min-run-time inf": (["bench", "deformconv", "--min-run-time",
                                                 "inf"], 2),
    },
    "checkpoint": {
        f"--resume, last.pt {kind}": (["train", "--resume", "{w}/ckpt-" + kind], 2)
        for kind in ("truncated", "random", "empty", "folder", "dangling", "loop", "list",
                     "no-epoch", "epoch-text", "config-list", "wrong-shapes", "row-garbage",
                     "best-garbage")
    } | {
        f"eval, best.pt {kind}": (["eval", "{w}/ckpt-" + kind, "--limit", "8"], 2)
        for kind in ("truncated", "random", "list", "wrong-shapes")
    },
    "metrics/results": {
        f"runs, {kind}": (["runs", "--dir", "{w}/listing-" + kind, "--json"], 0)
        for kind in ("results-text", "results-list", "results-nested", "results-nan",
                     "metrics-lists", "metrics-binary", "config-alias", "results-folder")
    } | {
        f"--compare, {kind}": (["runs", "--compare", "{w}/listing-" + kind + "/r", "{run}"], 2)
        for kind in ("results-text", "results-list", "metrics-lists", "metrics-binary",
                     "config-alias", "results-folder")
    },
    "run folder": {
        "--resume a dangling link": (["train", "--resume", "{w}/dangling-run"], 2),
        "--resume a looping link": (["train", "--resume", "{w}/loop-run"], 2),
        "--resume a file": (["train", "--resume", "{w}/utf16.yaml"], 2),
        "--resume a 300-character name": (["train", "--resume", "{w}/" + "r" * 300], 2),
        "--run-dir a 300-character name": (["train", "lenet", "--data", "{data}", "--run-dir",
                                            "{w}/" + "r" * 300, "--limit", "16"], 2),
        "--run-dir under a file": (["train", "lenet", "--data", "{data}", "--run-dir",
                                    "{w}/utf16.yaml/run", "--limit", "16"], 2),
        "--run-dir a looping link": (["train", "lenet", "--data", "{data}", "--run-dir",
                                      "{w}/loop-run", "--limit", "16"], 2),
        "runs --dir a file": (["runs", "--dir", "{w}/utf16.yaml"], 2),
        "runs --dir a looping link": (["runs", "--dir", "{w}/loop-run"], 2),
        "runs --dir holding a looping link": (["runs", "--dir", "{w}/links", "--json"], 0),
        "eval a dangling link": (["eval", "{w}/dangling-run"], 2),
    },
    "image folder": {
        "a looping sub-folder": (["train", "lenet", "--data", "imagefolder:{w}/imgs-loop",
                                  "--dry-run"], 0),
        "a looping sub-folder, trained": (["train", "lenet", "--data",
                                           "imagefolder:{w}/imgs-loop", "--run-dir",
                                           "{w}/imgs-loop-run", "--epochs", "1", "-q"], 0),
        "a class named with a newline": (["train", "lenet", "--data",
                                          "imagefolder:{w}/imgs-newline", "--run-dir",
                                          "{w}/imgs-newline-run", "--epochs", "1", "-q"], 2),
        "a class named in undecodable bytes": (["train", "lenet", "--data",
                                                "imagefolder:{w}/imgs-bytes", "--run-dir",
                                                "{w}/imgs-bytes-run", "--epochs", "1", "-q"], 2),
        "a class folder that is a dangling link": (["train", "lenet", "--data",
                                                    "imagefolder:{w}/imgs-dangling", "--run-dir",
                                                    "{w}/imgs-dangling-run", "--epochs", "1",
                                                    "-q"], 0),
    },
    "CIFAR labels": {
        f"labels {kind}": (["train", "lenet", "--data", "cifar10:{w}/cifar-" + kind,
                            "--run-dir", "{w}/cifar-run-" + kind, "--epochs", "1", "-q"], 2)
        for kind in ("text", "float", "huge", "bool", "negative", "nested")
    },
    "compressed data": {
        "a .gz that inflates past its header": (["train", "lenet", "--data", "{w}/gzbomb",
                                                 "--run-dir", "{w}/gzbomb-run"], 2),
        "a .gz that declares 10**9 images": (["train", "lenet", "--data", "{w}/gzhuge",
                                              "--run-dir", "{w}/gzhuge-run"], 2),
    },
    "sizes": {
        "input_size 100000": (["train", "lenet", "--data", "{data}", "--limit", "16",
                               "--set", "input_size=100000", "--run-dir", "{w}/size-run"], 2),
        "batch_size 2**62": (["train", "lenet", "--data", "{data}", "--limit", "16",
                              "--epochs", "1", "--batch-size", str(2**62), "--run-dir",
                              "{w}/batch-run", "-q"], 0),
        "bench batch 10**9": (["bench", "lenet", "--batch-sizes", str(10**9), "--no-train",
                               "--min-run-time", "0.01"], 2),
        "summary 10**6 pixels": (["summary", "lenet", "--input-size", "1000000"], 2),
    },
}
CASES = [(family, name, *case) for family, cases in FAMILIES.items()
         for name, case in cases.items()]


def write_world(w: Path, data: Path) -> Path:
    """Every damaged file, link and folder the battery needs, and one finished run."""
    import pickle

    import numpy as np
    from PIL import Image

    from cnnbench.data import cifar10

    text = "model: lenet\nlr: 0.05\n"
    (w / "utf16.yaml").write_bytes(text.encode("utf-16"))
    (w / "utf8bom.yaml").write_bytes(text.encode("utf-8-sig"))
    (w / "utf16le.yaml").write_bytes(text.encode("utf-16-le"))
    (w / "latin1.yaml").write_bytes("model: lenet\nname: caf\xe9\n".encode("latin-1"))
    (w / "random.yaml").write_bytes(np.random.default_rng(0).bytes(4000))
    (w / "deep.yaml").write_text("model: lenet\nbetas: " + "[" * 5000 + "]" * 5000 + "\n")
    (w / "deepmap.yaml").write_text("model: lenet\nmodel_args: " + "{a: " * 40 + "1"
                                    + "}" * 40 + "\n")
    (w / "laughs.yaml").write_text(BILLION_LAUGHS)
    (w / "big.yaml").write_text("model: lenet\n" + "# padding\n" * 20_000)
    os.mkfifo(w / "fifo.yaml")
    (w / "dangling.yaml").symlink_to(w / "nothing.yaml")
    (w / "loop.yaml").symlink_to(w / "loop.yaml")
    for name, body in {"model_list": "model: [lenet]", "model_null": "model: null",
                       "model_number": "model: 5", "task_list": "model: lenet\ntask: [a]",
                       "number_key": "model: lenet\n1: 2", "list_key": "model: lenet\n? [a]\n: 1",
                       "top_list": "- model\n- lenet", "lr_null": "model: lenet\nlr: null",
                       "model_args_number": "model: lenet\nmodel_args: 5",
                       "input_size_map": "model: lenet\ninput_size: {a: 1}",
                       "cuda_number": "model: lenet\ncuda: 5",
                       "python_tag": "model: lenet\nlr: !!python/object/apply:os.system [ls]",
                       "date_lr": "model: lenet\nlr: 2026-01-01"}.items():
        (w / f"{name}.yaml").write_text(body + "\n")
    # A finished run and its damaged copies.
    run = w / "run"
    assert cli(["train", "lenet", "--data", data, "--limit", "32", "--epochs", "1", "-q",
                "--set", "val_size=8", "--run-dir", run]) == 0
    good = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    damaged = {"truncated": lambda b: b[:300], "random": lambda b: bytes(reversed(b)),
               "empty": lambda b: b""}
    for kind in ("truncated", "random", "empty", "folder", "dangling", "loop", "list", "no-epoch",
                 "epoch-text", "config-list", "wrong-shapes", "row-garbage", "best-garbage"):
        folder = w / f"ckpt-{kind}"
        shutil.copytree(run, folder)
        for name in ("last.pt", "best.pt"):
            path = folder / "checkpoints" / name
            state = dict(good)
            if kind in damaged:
                path.write_bytes(damaged[kind](path.read_bytes()))
                continue
            path.unlink()
            if kind == "folder":
                path.mkdir()
            elif kind == "dangling":
                path.symlink_to(folder / "nothing.pt")
            elif kind == "loop":
                path.symlink_to(path)
            else:
                if kind == "list":
                    state = [1, 2, 3]
                elif kind == "no-epoch":
                    del state["epoch"]
                elif kind == "epoch-text":
                    state["epoch"] = "one"
                elif kind == "config-list":
                    state["config"] = ["lenet"]
                elif kind == "wrong-shapes":
                    state["model"] = {k: torch.zeros(3) for k in state["model"]}
                elif kind == "row-garbage":
                    state["row"] = "garbage"
                elif kind == "best-garbage":
                    state["best"], state["best_epoch"] = "high", [1]
                torch.save(state, path)
    # Run listings with one damaged run each.
    for kind in ("results-text", "results-list", "results-nested", "results-nan", "metrics-lists",
                 "metrics-binary", "config-alias", "results-folder"):
        folder = w / f"listing-{kind}" / "r"
        shutil.copytree(run, folder)
        results, metrics = folder / "results.json", folder / "metrics.jsonl"
        if kind == "results-text":
            results.write_text('{"test_accuracy": "high", "epochs": "two", "model": 5}')
        elif kind == "results-list":
            results.write_text("[1, 2, 3]")
        elif kind == "results-nested":
            results.write_text("[" * 100_000 + "]" * 100_000)
        elif kind == "results-nan":
            results.write_text('{"test_accuracy": NaN, "minutes": 1e999}')
        elif kind == "metrics-lists":
            metrics.write_text("[1, 2]\n\"text\"\n{\"epoch\": \"one\"}\n")
        elif kind == "metrics-binary":
            metrics.write_bytes(b"\xff\xfe\x00garbage\n")
        elif kind == "config-alias":
            (folder / "config.yaml").write_text(BILLION_LAUGHS)
        elif kind == "results-folder":
            results.unlink()
            results.mkdir()
    (w / "dangling-run").symlink_to(w / "no-such-run")
    (w / "loop-run").symlink_to(w / "loop-run")
    (w / "links").mkdir()
    shutil.copytree(run, w / "links" / "ok")
    (w / "links" / "loop").symlink_to(w / "links" / "loop")
    (w / "links" / "dangling").symlink_to(w / "links" / "nothing")
    # Image folders: a looping sub-folder, class names that are not text-safe.
    for kind, classes in (("loop", ["cat", "dog"]), ("newline", ["cat", "do\ng"]),
                          ("bytes", ["cat", os.fsdecode(b"d\xffg")]),
                          ("dangling", ["cat", "dog"])):
        root = w / f"imgs-{kind}"
        for c, name in enumerate(classes):
            folder = root / name
            folder.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(np.full((28, 28), 40 * c + i, np.uint8)).save(folder / f"{i}.png")
        if kind == "loop":
            (root / "cat" / "again").symlink_to(root / "cat")
        if kind == "dangling":
            (root / "eel").symlink_to(root / "nothing")
    # Fashion-MNIST whose training images inflate past their header, or declare 10**9 images.
    import gzip

    for kind, header, body in (("gzbomb", [10, 28, 28], 20 * 2**20),
                               ("gzhuge", [10**9, 28, 28], 0)):
        shutil.copytree(data, w / kind)
        head = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in header)
        (w / kind / "train-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(head + bytes(body), compresslevel=1))
    # CIFAR batches whose labels are of the wrong type.
    labels = {"text": ["cat"] * 4, "float": [1.5] * 4, "huge": [2**70] * 4, "bool": [True] * 4,
              "negative": [-1] * 4, "nested": [[1]] * 4}
    for kind, bad in labels.items():
        folder = w / f"cifar-{kind}" / cifar10.FOLDER
        folder.mkdir(parents=True)
        for b, name in enumerate((*cifar10.TRAIN_BATCHES, cifar10.TEST_BATCH)):
            batch = {"data": np.full((4, 3072), b, np.uint8),
                     "labels": bad if b == 0 else [1, 2, 3, 4]}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        (folder / cifar10.META).write_bytes(pickle.dumps(
            {"label_names": [f"c{i}" for i in range(10)]}, protocol=2))
    return run


@pytest.fixture(scope="module")
def world(tmp_path_factory, fmnist_dir):
    threads = torch.get_num_threads()
    w = tmp_path_factory.mktemp("world")
    run = write_world(w, fmnist_dir)
    torch.set_num_threads(threads)
    return w, run


def one_line_or_success(code: int, err: str, expected: int) -> None:
    assert "Traceback" not in err and "unexpected error" not in err, err[-2000:]
    assert code == expected, err[-2000:]
    if code == 2:
        assert err.count("\n") == 1 and len(err) < 600, err[-2000:]


@pytest.mark.parametrize("family,name,argv,expected", CASES,
                         ids=[f"{f}: {n}" for f, n, *_ in CASES])
def test_every_bad_input_is_one_line_and_exit_2(family, name, argv, expected, world, fmnist_dir,
                                                capsys, keep_threads, monkeypatch, tmp_path):
    w, run = world
    monkeypatch.chdir(tmp_path)  # a default runs/ would be made here
    monkeypatch.setenv("CNNBENCH_CACHE", str(tmp_path / "cache"))
    argv = [a.replace("{w}", str(w)).replace("{run}", str(run)).replace("{data}", str(fmnist_dir))
            for a in argv]
    capsys.readouterr()
    code = cli(argv)
    one_line_or_success(code, capsys.readouterr().err, expected)


# --- the property: any recipe value or --set string is exit 0 or one line and exit 2 -------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cnnbench import recipe  # noqa: E402

KEY_NAMES = sorted(recipe.schema("classification"))
ARGV_TEXT = st.text(st.characters(blacklist_characters="\x00"), max_size=40)
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**62)
           | st.floats() | ARGV_TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(ARGV_TEXT, inner, max_size=3), max_leaves=12)
KEYS = st.sampled_from(KEY_NAMES) | ARGV_TEXT
PROPERTY = settings(max_examples=int(os.environ.get("CNNBENCH_HYPOTHESIS_EXAMPLES", 40)),
                    deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def run_cli(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = cli(argv)
    return code, capsys.readouterr().err


@PROPERTY
@given(recipe_values=st.dictionaries(KEYS, VALUES, max_size=4))
def test_any_recipe_is_exit_0_or_one_line(recipe_values, tmp_path, capsys, keep_threads):
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model": "lenet", **recipe_values}))
    code, err = run_cli(["train", "--dry-run", "--config", path], capsys)
    one_line_or_success(code, err, 0 if code == 0 else 2)


@PROPERTY
@given(assignments=st.lists(st.tuples(KEYS, ARGV_TEXT), max_size=3))
def test_any_set_string_is_exit_0_or_one_line(assignments, capsys, keep_threads):
    argv = ["train", "lenet", "--dry-run"]
    for key, value in assignments:
        argv += ["--set", f"{key}={value}"]
    code, err = run_cli(argv, capsys)
    one_line_or_success(code, err, 0 if code == 0 else 2)


def test_a_sweep_over_the_cap_needs_yes_and_is_counted_before_it_is_resolved():
    from cnnbench.sweep import MAX_RUNS, check_size

    s = {"grid": {"lr": [0.1, 0.2], "momentum": list(range(MAX_RUNS))}, "seeds": None}
    with pytest.raises(CnnbenchError, match=f"asks for {2 * MAX_RUNS} runs .* add --yes"):
        check_size(s)
    assert check_size(s, yes=True) == 2 * MAX_RUNS
    assert check_size({"grid": {"lr": [0.1]}, "seeds": [0, 1, 2]}) == 3
    with pytest.raises(CnnbenchError, match="1,000,000,000,000 runs, more than 100,000"):
        check_size({"grid": {f"k{i}": list(range(1000)) for i in range(4)}, "seeds": None},
                   yes=True)


def test_an_unforeseen_error_is_one_line_naming_its_saved_traceback(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in resolve")

    monkeypatch.setattr("cnnbench.recipe.resolve", broken)
    monkeypatch.delenv("CNNBENCH_DEBUG", raising=False)
    code, err = run_cli(["train", "lenet", "--dry-run"], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: unexpected error (ZeroDivisionError: a bug in resolve); "
                          "the traceback is in "), err
    saved = Path(err.split("the traceback is in ")[1].split(": please")[0])
    text = saved.read_text()
    saved.unlink()
    assert text.startswith("cnnbench train lenet --dry-run") and "Traceback" in text
    assert "def broken" not in text and "raise ZeroDivisionError" in text
