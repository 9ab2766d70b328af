"""Batch transforms that run on the training device, on a whole batch at once.

Images arrive as uint8 ``[N, C, H, W]`` straight from the in-memory data set; nothing goes
through PIL. The random transforms return what they drew (the shifts, the flipped rows), so that a
task with boxes or masks can move those with the pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return images.float().div_(255.0)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a float batch to ``(H, W)``; a no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=x.shape[-1] > size[-1] and x.device.type != "mps")


def normalize(x: torch.Tensor, mean: float | list[float], std: float | list[float]) -> torch.Tensor:
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return (x - mean_t) / std_t


def random_shifts(n: int, padding: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image offsets ``(dy, dx)`` in ``[-padding, padding]``."""
    d = torch.randint(-padding, padding + 1, (2, n), device=device)
    return d[0], d[1]


def shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, padding: int) -> torch.Tensor:
    """Move image ``i`` by ``(dy[i], dx[i])`` pixels (each at most ``padding``), filling zeros.

    The same as padding by ``p`` and cropping the original size at offset ``(p - dy, p - dx)``,
    done for the whole batch with one gather (and no host sync: ``padding`` is given, not read
    from the shifts). A pixel at ``(y, x)`` lands on ``(y + dy, x + dx)``.
    """
    n, c, h, w = x.shape
    p = int(padding)
    if p == 0:
        return x
    padded = F.pad(x, (p, p, p, p))
    rows = (p - dy).view(n, 1, 1, 1) + torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = (p - dx).view(n, 1, 1, 1) + torch.arange(w, device=x.device).view(1, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chans, rows, cols]


def random_crop(x: torch.Tensor, padding: int) -> tuple[torch.Tensor, tuple]:
    """torchvision's ``RandomCrop(size, padding)`` for a batch: returns the image and its shifts."""
    if padding <= 0:
        zero = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return x, (zero, zero)
    dy, dx = random_shifts(x.shape[0], padding, x.device)
    return shift(x, dy, dx, padding), (dy, dx)


def random_hflip(x: torch.Tensor, p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each image left-right with probability ``p``; returns the images and which flipped."""
    flipped = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(flipped.view(-1, 1, 1, 1), x.flip(-1), x), flipped


def wide_float(device) -> torch.dtype:
    """float64 where the device has it (MPS has not): for arithmetic that must round as
    torchvision's Python floats and fused multiply-adds do."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def crop_boxes(n: int, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
               device="cpu", tries: int = 10) -> tuple[torch.Tensor, ...]:
    """``(top, left, h, w)`` of ``n`` crops of an ``height`` x ``width`` image, drawn as
    ``v2.RandomResizedCrop`` draws one: area fraction uniform in ``scale``, log aspect ratio
    uniform in ``log(ratio)``, the first of ``tries`` draws that fits, else the centre crop of
    the largest box within ``ratio``. All tries are drawn at once; nothing is read on the host."""
    wide = wide_float(device)
    fraction = torch.empty(n, tries, device=device).uniform_(*scale)
    aspect = torch.empty(n, tries, device=device).uniform_(
        math.log(ratio[0]), math.log(ratio[1])).exp()
    target = fraction.to(wide) * (height * width)
    w = (target * aspect).sqrt().round()  # v2: int(round(math.sqrt(...))) in double precision
    h = (target / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # the first try that fits (0 when none does)
    w, h = w.gather(1, first).squeeze(1).long(), h.gather(1, first).squeeze(1).long()
    # v2's fallback: the whole image, or its centre within the nearest ratio bound
    fall_w, fall_h = width, height
    if width / height < min(ratio):
        fall_h = int(round(width / min(ratio)))
    elif width / height > max(ratio):
        fall_w = int(round(height * max(ratio)))
    found = fits.any(dim=1)
    h, w = torch.where(found, h, fall_h), torch.where(found, w, fall_w)
    u = torch.rand(2, n, device=device, dtype=wide)  # uniform offsets, as v2's randint
    top = torch.where(found, (u[0] * (height - h + 1)).floor().long(), (height - fall_h) // 2)
    left = torch.where(found, (u[1] * (width - w + 1)).floor().long(), (width - fall_w) // 2)
    return top, left, h, w


def resized_crop(images: torch.Tensor, boxes: tuple[torch.Tensor, ...],
                 size: tuple[int, int]) -> torch.Tensor:
    """Crop ``boxes`` (``top, left, h, w``, one per image) from a uint8 batch and resize each
    to ``size``, bilinear, in one ``grid_sample``: image ``i`` as ``v2.functional.resized_crop``
    makes it on the GPU (``F.interpolate`` with ``align_corners=False``, rounded), the sample
    points clamped to the crop as resizing the cropped image clamps them. No antialiasing: a
    crop larger than ``size`` is sampled, not filtered (see README, augmentation)."""
    n, _, height, width = images.shape

    def points(start, length, steps, extent):  # -> [N, steps], normalised for grid_sample
        step = length.float().unsqueeze(1) / steps
        src = (torch.arange(steps, device=images.device) + 0.5) * step - 0.5
        src = torch.minimum(src.clamp(min=0), (length - 1).unsqueeze(1).float())
        return (2 * (start.unsqueeze(1) + src) + 1) / extent - 1

    top, left, h, w = boxes
    ys, xs = points(top, h, size[0], height), points(left, w, size[1], width)
    grid = torch.stack(torch.broadcast_tensors(xs.unsqueeze(1), ys.unsqueeze(2)), dim=-1)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.round_().to(images.dtype)


def random_resized_crop(images: torch.Tensor, size: tuple[int, int], scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> tuple[torch.Tensor, tuple]:
    """``v2.RandomResizedCrop(size, scale, ratio)`` for a uint8 batch, each image its own crop;
    returns the images and the boxes ``(top, left, h, w)``."""
    n, _, height, width = images.shape
    boxes = crop_boxes(n, height, width, scale, ratio, images.device)
    return resized_crop(images, boxes, size), boxes


BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2  # ColorJitter's adjustments, as v2 numbers them


def blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """v2's ``_blend`` of a uint8 image with a ratio per image (``[N, 1, 1, 1]``), on the
    image's values as float32: ``x * ratio + other * (1 - ratio)`` clamped to [0, 255] and
    truncated (v2 goes back to uint8). v2 adds the second term with ``add_(alpha=)``, a fused
    multiply-add; in double precision its product is exact and the sum rounds as the fused one
    does, so each image is v2's to the bit."""
    wide = wide_float(x.device)
    out = (x * ratio).to(wide).addcmul_(other.to(wide), (1 - ratio).to(wide))
    return out.float().clamp_(0, 255).trunc_()


def jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation of a uint8 batch, image ``i`` adjusted by
    ``factors[i]`` (``[N, 3]``, in the order BRIGHTNESS, CONTRAST, SATURATION) in the order
    ``order[i]`` (a permutation of 0, 1, 2): each image as v2's ``adjust_brightness``,
    ``adjust_contrast`` and ``adjust_saturation`` make it. All three blend the image with
    something: black, its grey mean, its grey image; each step picks that per image."""
    from torchvision.transforms.v2.functional import rgb_to_grayscale_image

    n, channels = images.shape[:2]
    x = images.float()  # whole numbers throughout, as v2's uint8 between its steps
    for step in range(order.shape[1]):
        op = order[:, step].view(n, 1, 1, 1)
        ratio = factors.gather(1, order[:, step:step + 1]).view(n, 1, 1, 1)
        grey = rgb_to_grayscale_image(x).floor_() if channels == 3 else x  # v2's, of uint8
        mean = grey.mean(dim=(1, 2, 3), keepdim=True)
        other = torch.where(op == SATURATION, grey, torch.where(op == CONTRAST, mean, 0.0))
        if channels == 1:  # v2 leaves a grey image's saturation alone
            ratio = torch.where(op == SATURATION, 1.0, ratio)
        x = blend(x, other, ratio)
    return x.to(images.dtype)


def color_jitter(images: torch.Tensor, strength: float) -> torch.Tensor:
    """``v2.ColorJitter(brightness=s, contrast=s, saturation=s)`` for a uint8 batch: each image
    draws its three factors from [max(0, 1 - s), 1 + s] and its own order of the three, as v2
    draws them per call."""
    n = images.shape[0]
    factors = torch.empty(n, 3, device=images.device).uniform_(max(0.0, 1 - strength),
                                                              1 + strength)
    order = torch.rand(n, 3, device=images.device).argsort(dim=1)  # a uniform permutation
    return jitter(images, factors, order)


def random_erasing(x: torch.Tensor, p: float, scale=(0.02, 0.33), ratio=(0.3, 3.3),
                   value: float = 0.0) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017) for a batch: each image, with probability ``p``, gets
    one rectangle of area ``scale`` x image and aspect ``ratio`` set to ``value``."""
    if p <= 0:
        return x
    n, _, h, w = x.shape
    dev = x.device
    area = torch.empty(n, device=dev).uniform_(*scale) * (h * w)
    log_r = torch.empty(n, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    eh = (area * log_r.exp()).sqrt().round().clamp(1, h)
    ew = (area / log_r.exp()).sqrt().round().clamp(1, w)
    top = (torch.rand(n, device=dev) * (h - eh + 1)).floor()
    left = (torch.rand(n, device=dev) * (w - ew + 1)).floor()
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    inside = ((ys >= top.view(n, 1, 1)) & (ys < (top + eh).view(n, 1, 1))
              & (xs >= left.view(n, 1, 1)) & (xs < (left + ew).view(n, 1, 1)))
    chosen = torch.rand(n, device=dev) < p
    mask = (inside & chosen.view(n, 1, 1)).unsqueeze(1)
    return x.masked_fill(mask, value)


def one_hot(labels: torch.Tensor, classes: int, dtype=torch.float32) -> torch.Tensor:
    """``[N]`` labels -> ``[N, classes]`` rows of 0 and 1 (``F.one_hot`` reads the largest label
    on the host)."""
    return (labels.unsqueeze(1) == torch.arange(classes, device=labels.device)).to(dtype)


def beta_sample(alpha: float, device) -> torch.Tensor:
    """One draw of Beta(alpha, alpha), a 0-d tensor on ``device``: the share of two Gamma draws."""
    g = torch._standard_gamma(torch.full((2,), float(alpha), device=device))
    return g[0] / g.sum()


def cutmix_box(h: int, w: int, lam: torch.Tensor) -> torch.Tensor:
    """A ``[h, w]`` boolean box of about ``1 - lam`` of the area, centred anywhere (clipped at
    the border, as CutMix does)."""
    dev = lam.device
    half_h, half_w = h * (1 - lam).sqrt() / 2, w * (1 - lam).sqrt() / 2
    cy, cx = torch.rand((), device=dev) * h, torch.rand((), device=dev) * w
    top, bottom = (cy - half_h).round().clamp(0, h), (cy + half_h).round().clamp(0, h)
    left, right = (cx - half_w).round().clamp(0, w), (cx + half_w).round().clamp(0, w)
    ys = torch.arange(h, device=dev).view(h, 1)
    xs = torch.arange(w, device=dev).view(1, w)
    return (ys >= top) & (ys < bottom) & (xs >= left) & (xs < right)


def mix(x: torch.Tensor, soft: torch.Tensor, mixup: float = 0.0,
        cutmix: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a float batch with itself
    reversed (timm's pairing: image i with image N-1-i), one ``lam`` per batch from
    Beta(alpha, alpha); given both alphas, each batch takes CutMix with probability 0.5. Returns
    the images and the targets ``lam * soft + (1 - lam) * partner's``, where CutMix's ``lam``
    is the share of the image left uncovered by the pasted box. Reads nothing on the host."""
    n, _, h, w = x.shape
    partner = x.flip(0)
    images, lams = [], []
    if mixup > 0:
        lam = beta_sample(mixup, x.device)
        images.append(partner.lerp(x, lam.to(x.dtype)))
        lams.append(lam)
    if cutmix > 0:
        box = cutmix_box(h, w, beta_sample(cutmix, x.device))
        images.append(torch.where(box, partner, x))
        lams.append(1 - box.sum() / (h * w))
    if not images:
        return x, soft
    x, lam = images[0], lams[0]
    if len(images) == 2:
        take_cutmix = torch.rand((), device=x.device) < 0.5
        x, lam = torch.where(take_cutmix, images[1], x), torch.where(take_cutmix, lams[1], lam)
    return x, soft.flip(0).lerp(soft, lam.to(soft.dtype))


def grid(images: torch.Tensor, nrow: int = 8, pad: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Float images ``[N, C, H, W]`` -> one ``[C, rows*(H+pad)+pad, nrow*(W+pad)+pad]`` picture.

    What ``torchvision.utils.make_grid`` does, without importing torchvision for it.
    """
    n, c, h, w = images.shape
    rows = max(1, math.ceil(n / nrow))
    canvas = images.new_full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value)
    for i in range(n):
        y, x = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        canvas[:, y:y + h, x:x + w] = images[i]
    return canvas
