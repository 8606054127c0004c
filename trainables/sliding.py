"""Validation with sliding windows (mmsegmentation's slide inference), for images larger than a model should see
at once: windows of a size every stride, the last of each row and column moved back to end at the image's edge,
each window's logits summed into place and divided by how many windows cover each pixel.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.step import outputs_of


def default_stride(window: tuple[int, int]) -> tuple[int, int]:
    """Two thirds of the window (mmseg's 512 -> 341), at least 1."""
    return tuple(max(1, 2 * side // 3) for side in window)


def window_origins(size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of the sliding windows over an image of `size`, as mmseg's slide inference places them:
    every `stride`, the last window of a row or column moved back to end at the image's edge."""
    axes = []
    for length, side, step in zip(size, window, stride):
        side = min(side, length)
        steps = max(length - side + step - 1, 0) // step + 1
        axes.append([max(min(i * step + side, length) - side, 0) for i in range(steps)])
    return [(y, x) for y in axes[0] for x in axes[1]]


def sliding_outputs(model: nn.Module, images: torch.Tensor, window: tuple[int, int],
                    stride: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The model's outputs over whole images from windows: each window's logits (at its size) summed into
    place, divided by how many windows cover each pixel."""
    size = tuple(images.shape[-2:])
    height, width = min(window[0], size[0]), min(window[1], size[1])
    sums: dict[str, torch.Tensor] = {}
    covered = torch.zeros(1, 1, *size, device=images.device)
    for y, x in window_origins(size, window, stride):
        outputs = outputs_of(model(images[:, :, y : y + height, x : x + width]), (height, width))
        for key, logits in outputs.items():
            total = sums.setdefault(key, logits.new_zeros(*logits.shape[:2], *size))
            total[:, :, y : y + height, x : x + width] += logits
        covered[:, :, y : y + height, x : x + width] += 1
    return {key: total / covered for key, total in sums.items()}
