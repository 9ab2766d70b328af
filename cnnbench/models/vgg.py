"""VGG built from ``vgg_block``s, with the notes' channel ratio for a lighter network."""

from torch import nn

from cnnbench.registry import register_model

VGG11_ARCH = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
VGG19_ARCH = ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512))


def vgg_block(num_convs: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """``num_convs`` 3x3 convolutions with ReLU, then a 2x2 max pool that halves the size."""
    layers = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
        in_channels = out_channels
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def vgg_features(conv_arch, in_channels: int) -> list[nn.Sequential]:
    blocks = []
    for num_convs, out_channels in conv_arch:
        blocks.append(vgg_block(num_convs, in_channels, out_channels))
        in_channels = out_channels
    return blocks


@register_model("vgg11", task="classification", image_size=(224, 224),
                source="seeds 000/003: VGG")
def vgg11(in_channels: int = 1, num_classes: int = 10, ratio: int = 1,
          dropout: float = 0.5) -> nn.Sequential:
    """VGG-11; ``ratio`` divides every convolution's channels (the notes train with ratio 4)."""
    arch = [(n, c // ratio) for n, c in VGG11_ARCH]
    out_channels = arch[-1][1]
    return nn.Sequential(
        *vgg_features(arch, in_channels), nn.Flatten(),
        # Five halvings take 224 px to 7 px.
        nn.Linear(out_channels * 7 * 7, 4096), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(4096, num_classes),
    )
