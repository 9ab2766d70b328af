"""Network in Network: NiN blocks and global average pooling instead of dense layers."""

from torch import nn

from cnnbench.registry import register_model


def nin_block(in_channels: int, out_channels: int, kernel_size: int, strides: int,
              padding: int) -> nn.Sequential:
    """One spatial convolution followed by two 1x1 convolutions (per-pixel dense layers)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, strides, padding), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
    )


@register_model("nin", task="classification", image_size=(224, 224),
                source="seeds 000/003: NiN")
def nin(in_channels: int = 1, num_classes: int = 10, dropout: float = 0.5) -> nn.Sequential:
    """NiN: four NiN blocks, the last with one channel per class, then global average pooling."""
    return nn.Sequential(
        nin_block(in_channels, 96, kernel_size=11, strides=4, padding=0),
        nn.MaxPool2d(3, stride=2),
        nin_block(96, 256, kernel_size=5, strides=1, padding=2),
        nn.MaxPool2d(3, stride=2),
        nin_block(256, 384, kernel_size=3, strides=1, padding=1),
        nn.MaxPool2d(3, stride=2),
        nn.Dropout(dropout),
        nin_block(384, num_classes, kernel_size=3, strides=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
    )
