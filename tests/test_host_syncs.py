"""No training step makes the host wait for the device (checked on the CPU by HostSyncs)."""

import pytest
import torch
from torch.nn import functional as F

from cnnbench import recipe as cfg
from cnnbench.tasks.metrics import Meter
from cnnbench.training.build import build_trainer
from cnnbench.training.callbacks import EMA
from cnnbench.training.loop import accumulation_plan
from cnnbench.training.syncs import HostSyncs

from test_dense_tasks import CASES, TINY

pytestmark = pytest.mark.usefixtures("scene_cache")


def test_the_detector_sees_what_syncs_and_only_that():
    x = torch.randn(16)
    with HostSyncs() as syncs:
        float(x.sum())
        x[x > 0]
        torch.bincount(torch.tensor([1, 2]))
        x.nonzero()
    assert [op for op, _ in syncs.found] == [
        "aten._local_scalar_dense.default", "aten.index.Tensor", "aten.bincount.default",
        "aten.nonzero.default"]
    with HostSyncs() as syncs:  # fixed shapes, no reads: nothing to wait for
        torch.where(x > 0, x, 0.0).sum()
        x[torch.tensor([0, 3])]
        x.topk(3).indices.argsort()
        torch.repeat_interleave(torch.tensor([1, 2]), torch.tensor([2, 1]), output_size=3)
        opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))])  # step count: host-side
        opt.param_groups[0]["params"][0].grad = torch.ones(2)
        opt.step()
    assert syncs.found == []


STEP_CASES = {"lenet": ({}, {"hflip": True, "crop_padding": 2, "random_erasing": 0.5,
                             "label_smoothing": 0.1, "grad_clip": 1.0}),
              "lenet mixup cutmix": ({}, {"mixup": 0.2, "cutmix": 1.0, "label_smoothing": 0.1}),
              "lenet crop jitter": ({}, {"rrc_scale": [0.08, 1.0], "color_jitter": 0.4,
                                         "hflip": True}),
              **{k: (args, extra) for k, (args, extra, _) in CASES.items()}}  # model [what]


@pytest.mark.parametrize("model", list(STEP_CASES))
def test_a_training_step_never_waits_for_the_device(model, fmnist_dir):
    """The task's augmentation, loss (matching, encoding, hard negatives, Dice), the optimizer
    step and the metric sums: no data-dependent shapes and no reads, so on CUDA the step is
    queued as a whole and the GPU never idles waiting for the host."""
    model_args, extra = STEP_CASES[model]
    overrides = {**TINY, "data": str(fmnist_dir), **extra, "model_args": model_args}
    trainer = build_trainer(cfg.resolve(model.split()[0], None, overrides), callbacks=[])
    trainer.model.train()
    meter = Meter(trainer.task.metrics(), train=True)
    images, targets = trainer.train_split.take(torch.arange(4))
    trainer.train_step(images, targets)  # first step: optimizer state made
    with HostSyncs() as syncs:
        images, targets = trainer.train_split.take(torch.arange(4, 8))
        output, y, loss = trainer.train_step(images, targets)
        meter.update(output, y, loss, images.shape[0])
    assert syncs.found == []
    assert all(torch.isfinite(torch.as_tensor(v)) for v in meter.compute().values())


@pytest.mark.parametrize("model", list(STEP_CASES))
def test_prepare_model_and_loss_trace_as_one_graph(model, fmnist_dir):
    """What ``compile:`` compiles (compiling.CompiledForward): the task's augmentation, the model
    and the loss, one dynamo graph with no break, so inductor fuses across them and
    reduce-overhead captures all of it."""
    model_args, extra = STEP_CASES[model]
    overrides = {**TINY, "data": str(fmnist_dir), **extra, "model_args": model_args}
    trainer = build_trainer(cfg.resolve(model.split()[0], None, overrides), callbacks=[])
    images, targets = trainer.train_split.take(torch.arange(4))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(trainer._forward_loss)(images, targets, True)
    torch._dynamo.reset()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), \
        [str(b.reason)[:200] for b in explained.break_reasons]


@pytest.mark.parametrize("model", list(STEP_CASES))
def test_the_compiled_forward_and_loss_equal_the_eager_ones(model, fmnist_dir):
    """AOT autograd's graphs of prepare + model + loss (what inductor compiles, without its C
    build) give the eager loss and gradients, for every task."""
    model_args, extra = STEP_CASES[model]
    overrides = {**TINY, "data": str(fmnist_dir), **extra, "model_args": model_args}
    trainer = build_trainer(cfg.resolve(model.split()[0], None, overrides), callbacks=[])
    trainer.model.train()
    images, targets = trainer.train_split.take(torch.arange(4))
    torch._dynamo.reset()
    compiled = torch.compile(trainer._forward_loss, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (trainer._forward_loss, compiled):
        torch.manual_seed(0)  # the same augmentation and dropout draws
        loss = fn(images, targets, True)[2]
        grads = torch.autograd.grad(loss, list(trainer.model.parameters()), allow_unused=True)
        results.append((loss.detach(), [g for g in grads if g is not None]))
    torch._dynamo.reset()
    (eager_loss, eager_grads), (loss, grads) = results
    torch.testing.assert_close(loss, eager_loss, rtol=1e-4, atol=1e-6)
    assert len(grads) == len(eager_grads) > 0
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-5)


def test_accumulated_steps_and_the_ema_never_wait_for_the_device(fmnist_dir):
    """``accumulate_steps``: the loss shares are host numbers; ``ema``: one fused lerp and
    buffer copies after the optimizer step (no step count read, unlike AveragedModel)."""
    overrides = {**TINY, "data": str(fmnist_dir), "accumulate_steps": 2, "grad_clip": 1.0,
                 "mixup": 0.2, "schedule": "constant"}
    ema = EMA(0.99)
    trainer = build_trainer(cfg.resolve("lenet-bn", None, overrides), callbacks=[ema])
    ema.before_fit(trainer)
    trainer.model.train()
    images, targets = trainer.train_split.take(torch.arange(4))
    trainer.train_step(images, targets)  # first step: optimizer state made
    with HostSyncs() as syncs:
        for micro in accumulation_plan([2, 2], 2):
            trainer.train_step(images[:2], targets[:2], micro)
        ema.after_step(trainer, None)
    assert syncs.found == []


def test_dice_and_focal_one_hots_match_torch():
    from cnnbench.tasks.detection import focal_loss
    from cnnbench.tasks.segmentation import dice_loss

    logits, masks = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    masks[0, 0, 0] = 255  # void
    probs = logits.softmax(1) * (masks != 255)[:, None]
    one_hot = F.one_hot(masks.clamp(max=2) * (masks != 255), 3).permute(0, 3, 1, 2) \
        * (masks != 255)[:, None]
    inter, total = (probs * one_hot).sum((0, 2, 3)), probs.sum((0, 2, 3)) + one_hot.sum((0, 2, 3))
    torch.testing.assert_close(dice_loss(logits, masks), 1 - ((2 * inter + 1) / (total + 1)).mean())

    cls_logits, cls_target = torch.randn(2, 5, 3), torch.randint(0, 4, (2, 5))
    box, target = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    from torchvision.ops import sigmoid_focal_loss
    expected = sigmoid_focal_loss(cls_logits, F.one_hot(cls_target, 4)[..., 1:].float(),
                                  reduction="sum") / (cls_target > 0).sum().clamp(min=1)
    torch.testing.assert_close(focal_loss(cls_logits, box, cls_target, target)[1], expected)
