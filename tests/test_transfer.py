"""Transfer learning: init_from, torchvision weights from the hub cache, layer groups, lr_mult and
freeze_epochs (training/transfer.py). Tiny models and the synthetic IDX files of ``fmnist_dir``."""

import json

import pytest
import torch

from cnnbench import recipe as cfg
from cnnbench.checkpoints import init_from, load_checkpoint, load_matching
from cnnbench.errors import CnnbenchError
from cnnbench.models import get_model
from cnnbench.training.build import build_trainer
from cnnbench.train import resume, resume_trainer, train
from cnnbench.training.loop import Callback
from cnnbench.training.optimizers import build_optimizer, param_groups
from cnnbench.training.schedules import SCHEDULES, build_schedule
from cnnbench.training.transfer import check_freeze, head_name, layer_groups, prepare

from test_bad_inputs import cli

TINY = dict(limit=32, val_size=8, batch_size=8, epochs=2, optimizer="sgd", lr=0.05,
            momentum=0.9, log_graph=False, log_images=False)


@pytest.fixture(autouse=True)
def empty_recipe(tmp_path):
    (tmp_path / "none.yaml").write_text("")


def run(tmp_path, fmnist_dir, model="lenet-bn", name="run", callbacks=(), **changes):
    overrides = {**TINY, "data": str(fmnist_dir), **changes}
    results = train(model, tmp_path / "none.yaml", overrides, run_dir=tmp_path / name,
                    callbacks=callbacks)
    return tmp_path / name, results


def test_matching_tensors_load_and_the_rest_are_counted_by_reason():
    body = get_model("body-classifier", width=4)
    detector = get_model("single-object", width=4)
    report = load_matching(detector, body.state_dict(), "body")
    # The ResNet body: 5 stages' convolutions, norms and their running statistics.
    assert len(report.loaded) == 125 and all(n.startswith("body.") for n in report.loaded)
    # head.3 is the classifier's Linear(32, 10), the detector's Linear(288, 256).
    assert sorted(report.shape_mismatch) == ["head.3.bias", "head.3.weight"]
    assert report.shape_mismatch["head.3.weight"] == "file [10, 32], model [256, 288]"
    assert len(report.missing) == 7 and not report.unexpected  # head.5 (a norm) and head.7
    assert torch.equal(detector.body[4][1].conv2.weight, body.body[4][1].conv2.weight)
    assert "loaded 125" in report.line() and "skipped 2 of another shape" in report.line()


def test_ssd_resnet_takes_the_same_body_by_name():
    body = get_model("body-classifier", width=4)
    report = load_matching(get_model("ssd-resnet", width=4, head_channels=8), body.state_dict(),
                           "body")
    assert len(report.loaded) == 125 and report.unexpected == ["head.3.weight", "head.3.bias"]


@pytest.mark.parametrize("layout", ["checkpoint", "state_dict", "lightning", "ddp-compiled"])
def test_every_file_layout_and_prefix_loads(tmp_path, layout):
    source = get_model("lenet")
    state = source.state_dict()
    saved = {"checkpoint": {"model": state, "optimizer": {}, "epoch": 3},
             "state_dict": state, "lightning": {"state_dict": state, "epoch": 1},
             "ddp-compiled": {f"module._orig_mod.{k}": v for k, v in state.items()}}[layout]
    torch.save(saved, tmp_path / "w.pt")
    model = get_model("lenet")
    report = init_from(model, tmp_path / "w.pt")
    assert len(report.loaded) == len(state) and not report.missing
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), state.values()))


def test_a_run_folder_lends_best_else_last(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    first, second = get_model("lenet"), get_model("lenet")
    torch.save({"model": first.state_dict()}, folder / "last.pt")
    model = get_model("lenet")
    assert init_from(model, tmp_path / "run").source.endswith("last.pt")
    torch.save({"model": second.state_dict()}, folder / "best.pt")
    assert init_from(model, tmp_path / "run").source.endswith("best.pt")
    assert torch.equal(model.state_dict()["0.weight"], second.state_dict()["0.weight"])


def test_init_from_a_run_is_reported_in_its_results(tmp_path, fmnist_dir, capsys):
    run(tmp_path, fmnist_dir, model="lenet", name="first", epochs=1)
    second, results = run(tmp_path, fmnist_dir, model="lenet", name="second", epochs=1,
                          init_from=str(tmp_path / "first"))
    first_state = load_checkpoint(tmp_path / "first" / "checkpoints" / "best.pt")["model"]
    assert "init_from: loaded 10 tensors" in capsys.readouterr().err
    saved = json.loads((second / "results.json").read_text())
    assert saved["init_from"] == {"from": str(tmp_path / "first" / "checkpoints" / "best.pt"),
                                  "loaded": len(first_state), "shape_mismatch": 0,
                                  "missing": 0, "unexpected": 0, "statistics":
                                  "Fashion-MNIST's published statistics, mean/std 0.286/0.353"}


def test_weights_that_match_nothing_are_one_line_exit_2_and_no_folder(tmp_path, fmnist_dir,
                                                                       capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(get_model("body-classifier", width=4).state_dict(), tmp_path / "body.pt")
    code = cli(["train", "lenet", "--data", str(fmnist_dir), "--limit", "16", "--epochs", "1",
                "-q", "--set", f"init_from={tmp_path / 'body.pt'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "mismatched weights" in err, err
    assert not (tmp_path / "runs").exists()


def test_a_missing_init_from_fails_before_the_data_load(tmp_path):
    config = cfg.resolve("lenet", tmp_path / "none.yaml", {"init_from": str(tmp_path / "nope"),
                                                           "data": str(tmp_path / "no-data")})
    with pytest.raises(CnnbenchError, match="init_from: no file or run folder"):
        build_trainer(config, callbacks=[])


# --- torchvision weights from the hub cache ---

def test_weights_default_loads_the_cached_file_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("socket.socket.connect", None)  # any network use would fail loudly
    trained = get_model("torchvision:squeezenet1_1")
    cache = tmp_path / "hub" / "checkpoints"  # torch.hub.get_dir() under TORCH_HOME
    cache.mkdir(parents=True)
    torch.save(trained.state_dict(), cache / "squeezenet1_1-b8a52dc0.pth")
    model = get_model("torchvision:squeezenet1_1", weights="DEFAULT")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 trained.state_dict().values()))
    # Ten classes: the body loads, the classifier (1000 outputs in the file) keeps its own.
    ten = get_model("torchvision:squeezenet1_1", weights="IMAGENET1K_V1", num_classes=10)
    assert torch.equal(ten.features[0].weight, trained.features[0].weight)
    assert ten.classifier[1].weight.shape[0] == 10


def test_weights_not_in_the_cache_name_the_file_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CnnbenchError) as info:
        get_model("torchvision:resnet18", weights="DEFAULT")
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    with pytest.raises(CnnbenchError, match="not one of resnet18's: DEFAULT, IMAGENET1K_V1"):
        get_model("torchvision:resnet18", weights="IMAGENET9K")


# --- layer groups and discriminative rates ---

def test_layer_groups_follow_fastai_for_the_dense_models_and_a_rule_for_the_rest():
    for name in ("single-object", "multi-label", "ssd-resnet", "body-classifier"):
        model = get_model(name, width=4)
        groups = layer_groups(model)
        assert list(groups) == ["b1-b3", "b4-b5", "head"], name
        assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))
    assert head_name(get_model("lenet")) == "11"  # the last Linear of the Sequential
    assert head_name(get_model("torchvision:resnet18")) == "fc"
    assert head_name(get_model("torchvision:vgg11")) == "classifier"
    assert list(layer_groups(get_model("lenet"))) == ["body", "head"]


def test_lr_mult_of_the_wrong_length_names_the_groups(tmp_path, fmnist_dir):
    with pytest.raises(CnnbenchError, match=r"lr_mult has 3 rates but lenet has 2 layer groups "
                                            r"\(body, head\)"):
        run(tmp_path, fmnist_dir, model="lenet", lr_mult=[0.01, 0.1, 1])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_each_group_learns_at_lr_times_its_multiplier_under_every_schedule(schedule):
    model = get_model("single-object", width=4)
    mult = [0.01, 0.1, 1.0]
    groups = layer_groups(model)
    config = cfg.defaults()
    config.update(schedule=schedule, lr=0.2, epochs=3, warmup_epochs=1.0, momentum=0.9)
    layers = [(name, m, groups[name]) for name, m in zip(groups, mult)]
    optimizer = build_optimizer(model, config, param_groups(model, 0.2, layers))
    sched = build_schedule(optimizer, config, steps_per_epoch=4)
    by_name = {g["layer_group"]: g for g in optimizer.param_groups}
    assert optimizer.param_groups[0]["layer_group"] == "head"  # the lr the trainer logs
    for step in range(12):
        head = by_name["head"]["lr"]
        assert head > 0 or schedule == "cosine"
        for name, m in zip(groups, mult):
            assert by_name[name]["lr"] == pytest.approx(head * m, rel=1e-9, abs=1e-15)
        if step == 0 and schedule == "onecycle":
            assert [by_name[n]["max_lr"] for n in groups] == pytest.approx([0.002, 0.02, 0.2])
        optimizer.step()
        sched.step()


# --- freeze_epochs ---

class Snapshots(Callback):
    """Every parameter and batch-norm statistic after each epoch."""

    order = 1

    def __init__(self):
        self.states = []

    def after_epoch(self, trainer, row):
        self.states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})


def _split(model_name: str, state: dict) -> tuple[list, list]:
    """The body's and the head's entries (lenet-bn: the head is the last Linear, ``13``)."""
    head = head_name(get_model(model_name))
    body = [k for k in state if not k.startswith(head + ".") and "num_batches" not in k]
    return body, [k for k in state if k.startswith(head + ".")]


def test_freeze_epochs_train_the_head_first_then_everything(tmp_path, fmnist_dir):
    snapshots = Snapshots()
    config = cfg.resolve("lenet-bn", tmp_path / "none.yaml",
                         {**TINY, "data": str(fmnist_dir), "freeze_epochs": 1})
    trainer = build_trainer(config, tmp_path / "run", callbacks=[snapshots])
    first = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    body, head = _split("lenet-bn", first)
    after1, after2 = snapshots.states
    # Epoch 1: weights and batch-norm running statistics of the body untouched, the head moved.
    assert all(torch.equal(first[k], after1[k]) for k in body)
    assert any(not torch.equal(first[k], after1[k]) for k in head)
    # Epoch 2: everything trains.
    assert all(not torch.equal(after1[k], after2[k]) for k in body if "weight" in k)
    assert all(p.requires_grad for p in trainer.model.parameters())


def test_a_resumed_run_is_frozen_exactly_when_the_first_was(tmp_path, fmnist_dir):
    folder, _ = run(tmp_path, fmnist_dir, epochs=1, freeze_epochs=2)
    after1 = load_checkpoint(folder / "checkpoints" / "last.pt")
    assert after1["freeze"] == {"epochs": 2, "frozen": True}
    resume(folder, {"epochs": 2})
    after2 = load_checkpoint(folder / "checkpoints" / "last.pt")
    body, head = _split("lenet-bn", after1["model"])
    assert all(torch.equal(after1["model"][k], after2["model"][k]) for k in body)
    assert any(not torch.equal(after1["model"][k], after2["model"][k]) for k in head)
    resume(folder, {"epochs": 3})
    after3 = load_checkpoint(folder / "checkpoints" / "last.pt")
    assert after3["freeze"]["frozen"] is False
    assert all(not torch.equal(after2["model"][k], after3["model"][k]) for k in body
               if "weight" in k)


def test_freezing_is_refused_under_several_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    groups = layer_groups(get_model("lenet"))
    with pytest.raises(CnnbenchError, match="freeze_epochs does not run under --nproc"):
        check_freeze(1, groups, "lenet")
    check_freeze(0, groups, "lenet")


def test_an_init_that_would_redraw_cached_weights_is_refused():
    config = {"model": "torchvision:resnet18", "model_args": {"weights": "DEFAULT"},
              "init": "xavier_uniform"}
    with pytest.raises(CnnbenchError, match="init: xavier_uniform would redraw the weights"):
        prepare(get_model("lenet"), config, resuming=False)


# --- fine-tuning as the references do it: the weights' own statistics, no decay on norms ---

def test_torchvision_weights_bring_their_own_normalisation(tmp_path, fmnist_dir, monkeypatch,
                                                           capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(get_model("torchvision:squeezenet1_1").state_dict(),
               cache / "squeezenet1_1-b8a52dc0.pth")
    folder, results = run(tmp_path, fmnist_dir, model="torchvision:squeezenet1_1", epochs=1,
                          input_size=[3, 64, 64], model_args={"weights": "IMAGENET1K_V1"},
                          log_graph=False)
    context = load_checkpoint(folder / "checkpoints" / "last.pt")["context"]
    assert context["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert context["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert "torchvision squeezenet1_1 IMAGENET1K_V1" in context["stats"]
    assert "normalisation: the weights' own (torchvision squeezenet1_1 IMAGENET1K_V1)" \
        in capsys.readouterr().err
    # The same file given as init_from is known by its published name.
    _, results = run(tmp_path, fmnist_dir, model="torchvision:squeezenet1_1", name="again",
                     epochs=1, input_size=[3, 64, 64],
                     init_from=str(cache / "squeezenet1_1-b8a52dc0.pth"))
    assert "IMAGENET1K_V1" in results["init_from"]["statistics"]
    assert "0.485/0.229" in results["init_from"]["statistics"]


def test_a_run_from_our_own_weights_keeps_its_data_statistics(tmp_path, fmnist_dir):
    run(tmp_path, fmnist_dir, model="lenet", name="first", epochs=1)
    second, results = run(tmp_path, fmnist_dir, model="lenet", name="second", epochs=1,
                          init_from=str(tmp_path / "first"))
    assert results["init_from"]["statistics"].startswith("Fashion-MNIST's published statistics")
    context = load_checkpoint(second / "checkpoints" / "last.pt")["context"]
    assert context["mean"] == pytest.approx([0.2860], abs=1e-3)


def test_weight_decay_leaves_norms_and_biases_out_unless_asked():
    model = get_model("lenet-bn")
    config = {**cfg.defaults(), "optimizer": "sgd", "weight_decay": 5e-4}
    groups = build_optimizer(model, config).param_groups
    decayed = [p for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    free = [p for g in groups if g["weight_decay"] == 0 for p in g["params"]]
    assert len(decayed) + len(free) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    # lenet-bn's convolution and linear weights decay; the notes' BatchNorm (gamma and beta of
    # shape [1, C, 1, 1]) and every bias do not.
    assert sorted(names[id(p)] for p in decayed) == ["0.weight", "12.weight", "15.weight",
                                                     "4.weight", "9.weight"]
    assert {names[id(p)].rsplit(".", 1)[1] for p in free} == {"bias", "gamma", "beta"}
    everything = build_optimizer(model, {**config, "decay_norm_bias": True}).param_groups
    assert len(everything) == 1 and everything[0]["weight_decay"] == 5e-4
    assert len(build_optimizer(model, {**config, "weight_decay": 0.0}).param_groups) == 1


def test_a_run_made_before_the_norm_rule_resumes_with_its_own_groups(tmp_path, fmnist_dir):
    folder, _ = run(tmp_path, fmnist_dir, epochs=1, weight_decay=1e-3)
    last = folder / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    assert len(state["optimizer"]["param_groups"]) == 2  # weights decay, norms and biases not
    # As an older cnnbench wrote it: one group, and no decay_norm_bias key in its config.
    model = get_model("lenet-bn")
    old = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    state["optimizer"] = old.state_dict()
    del state["config"]["decay_norm_bias"]
    torch.save(state, last)
    trainer = resume_trainer(folder, {"epochs": 2})
    assert len(trainer.optimizer.param_groups) == 1
    assert trainer.config["decay_norm_bias"] is True
