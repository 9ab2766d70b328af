"""LeNet-5 as in the notes (sigmoid, average pooling) and LeNet with batch normalisation."""

import torch
from torch import nn

from cnnbench.registry import register_model


class BatchNorm(nn.Module):
    """Batch normalisation written out, as the d2l notes do.

    Training normalises with the batch's mean and (biased) variance and folds them into moving
    averages; evaluation uses the moving averages. ``momentum`` weighs the old average, as in the
    notes (0.9), the opposite of ``nn.BatchNorm``'s convention (0.1 weighs the new batch).
    """

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5, momentum: float = 0.9):
        super().__init__()
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.eps, self.momentum = eps, momentum
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.register_buffer("moving_mean", torch.zeros(shape))
        self.register_buffer("moving_var", torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            x_hat = (x - self.moving_mean) / torch.sqrt(self.moving_var + self.eps)
        else:
            dims = (0,) if x.dim() == 2 else (0, 2, 3)
            mean = x.mean(dim=dims, keepdim=True)
            var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
            x_hat = (x - mean) / torch.sqrt(var + self.eps)
            with torch.no_grad():  # under autocast the statistics may be half precision
                self.moving_mean.lerp_(mean.to(self.moving_mean.dtype), 1.0 - self.momentum)
                self.moving_var.lerp_(var.to(self.moving_var.dtype), 1.0 - self.momentum)
        return self.gamma * x_hat + self.beta


@register_model("lenet", task="classification", image_size=(28, 28),
                source="seeds 000/003: LeNet")
def lenet(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """LeNet-5: 5x5 convolutions, sigmoid, 2x2 average pooling, three dense layers."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=2), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, num_classes),
    )


@register_model("lenet-bn", task="classification", image_size=(28, 28),
                source="seeds 003: batch normalisation")
def lenet_bn(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """LeNet with the notes' from-scratch BatchNorm after every convolution and dense layer."""
    # As in the notes the first convolution has no padding here, so the flattened map is 16x4x4.
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5), BatchNorm(6, num_dims=4), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), BatchNorm(16, num_dims=4), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), BatchNorm(120, num_dims=2), nn.Sigmoid(),
        nn.Linear(120, 84), BatchNorm(84, num_dims=2), nn.Sigmoid(),
        nn.Linear(84, num_classes),
    )
