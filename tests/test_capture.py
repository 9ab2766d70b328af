"""The shared helpers that run a model to look inside it (summary, receptive fields, ERF)."""

import pytest
import torch
from torch import nn

from cnnbench.capture import capture, on_first_device, tensors
from cnnbench.errors import CnnbenchError


class Refuses(nn.Module):
    def forward(self, x):
        raise AssertionError("the forward pass should have stopped before this module")


def test_tensors_of_nested_outputs_in_order():
    a, b, c = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    assert [t.numel() for t in tensors({"x": (a, [b, None]), "y": c, "z": 3})] == [1, 2, 3]


def test_capture_returns_the_wanted_calls_and_stops_after_the_last():
    double = nn.Linear(2, 2)
    net = nn.Sequential(double, nn.ReLU(), Refuses())
    with torch.no_grad():
        double.weight.copy_(2 * torch.eye(2))
        double.bias.zero_()
    x = torch.tensor([[1.0, -3.0]], requires_grad=True)
    caught = capture(net, x, [("0", 1, 0), ("1", 1, 0)])
    assert caught[("0", 1, 0)].tolist() == [[2.0, -6.0]]
    assert caught[("1", 1, 0)].tolist() == [[2.0, 0.0]]
    # Still in the graph of the input: the gradient of the first output is the weight.
    (grad,) = torch.autograd.grad(caught[("0", 1, 0)].sum(), x)
    assert grad.tolist() == [[2.0, 2.0]]


def test_capture_counts_calls_of_a_shared_module():
    shared = nn.Linear(1, 1, bias=False)
    nn.init.constant_(shared.weight, 3.0)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared, self.stop = shared, Refuses()

        def forward(self, x):
            return self.stop(self.shared(self.shared(x)))

    caught = capture(Twice(), torch.ones(1, 1), [("shared", 2, 0)])
    assert caught[("shared", 2, 0)].item() == 9.0


def test_on_first_device_falls_back_and_fails_in_one_line():
    def meta_fails(model, info, device):
        if device == "meta":
            raise NotImplementedError("no meta kernel")
        return device, info.name

    assert on_first_device("lenet", None, (1, 28, 28), meta_fails) == ("cpu", "lenet")

    def always_fails(model, info, device):
        raise RuntimeError("boom\nsecond line")

    with pytest.raises(CnnbenchError, match=r"^lenet failed on input \[1, 1, 28, 28\]: boom$"):
        on_first_device("lenet", None, (1, 28, 28), always_fails)
