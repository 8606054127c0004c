"""Validation with sliding windows (engine.evaluate's window and stride: mmseg's slide inference)."""

import numpy as np
import pytest
import torch
from torch import nn

from trainables.config import TrainConfig
from trainables.data import load_split, synth_dataset
from trainables.data.device import DeviceSplit
from trainables.data.stream import StreamedSplit
from trainables.engine import evaluate
from trainables.losses import make_loss
from trainables.models import build_model
from trainables.sliding import default_stride, sliding_outputs, window_origins


def mmseg_origins(size, window, stride):
    """mmseg's EncoderDecoder.slide_inference loop, as written there."""
    h_img, w_img = size
    h_crop, w_crop = window
    h_stride, w_stride = stride
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    origins = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * h_stride, w_idx * w_stride
            y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
            origins.append((max(y2 - h_crop, 0), max(x2 - w_crop, 0)))
    return origins


@pytest.mark.parametrize("size, window, stride", [((64, 64), (32, 32), (21, 21)), ((50, 70), (32, 24), (10, 24)),
                                                  ((32, 48), (32, 48), (21, 32)), ((40, 41), (7, 40), (3, 1))])
def test_windows_are_placed_as_mmseg_places_them(size, window, stride):
    assert window_origins(size, window, stride) == mmseg_origins(size, window, stride)


def test_the_default_stride_is_two_thirds_of_the_window():
    assert default_stride((512, 1024)) == (341, 682) and default_stride((1, 2)) == (1, 1)


class WindowMean(nn.Module):
    """Logits that depend on the window: a 1x1 convolution plus the window's mean colour, weighted per class."""

    def __init__(self, classes=3):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.pixel = nn.Conv2d(3, classes, 1)
        self.window = nn.Parameter(torch.randn(classes, 3, generator=generator))

    def forward(self, images):
        means = images.mean((2, 3))  # N, 3
        return self.pixel(images) + (means @ self.window.T)[:, :, None, None]


def test_a_toy_model_assembled_from_windows_equals_the_direct_computation():
    torch.manual_seed(0)
    model = WindowMean().eval()
    images = torch.randn(2, 3, 23, 30)
    window, stride = (10, 16), (7, 9)
    with torch.no_grad():
        assembled = sliding_outputs(model, images, window, stride)["out"].numpy()
        # direct: every window's logits computed on their own, summed into place and averaged, in float64
        x = images.double().numpy()
        conv_w = model.pixel.weight.detach().double().numpy()[:, :, 0, 0]
        bias = model.pixel.bias.detach().double().numpy()
        mix = model.window.detach().double().numpy()
    expected = np.zeros((2, 3, 23, 30))
    covered = np.zeros((23, 30))
    for y, x0 in mmseg_origins((23, 30), window, stride):
        part = x[:, :, y : y + 10, x0 : x0 + 16]
        logits = np.einsum("kc,nchw->nkhw", conv_w, part) + bias[None, :, None, None]
        logits += (part.mean((2, 3)) @ mix.T)[:, :, None, None]
        expected[:, :, y : y + 10, x0 : x0 + 16] += logits
        covered[y : y + 10, x0 : x0 + 16] += 1
    assert covered.min() >= 1 and covered.max() > 1  # overlapping windows, no pixel left out
    assert np.abs(assembled - expected / covered).max() < 1e-4
    # a per-pixel model gives whole-image logits whatever the windows
    pixelwise = nn.Conv2d(3, 3, 1).eval()
    with torch.no_grad():
        assert torch.allclose(sliding_outputs(pixelwise, images, window, stride)["out"], pixelwise(images), atol=1e-5)


@pytest.fixture(scope="module")
def val_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("pets-val")
    synth_dataset("pets", root, train=4, val=5, seed=2)
    return root, load_split("pets", root, "test", (32, 48), root / "cache", progress=False)


def test_a_window_of_the_image_gives_the_whole_image_results(val_cache):
    root, arrays = val_cache
    config = TrainConfig(arch="segformer_b0", data_root=str(root), image_size=(32, 48), device="cpu")
    torch.manual_seed(0)
    model = build_model(config).to(memory_format=torch.channels_last)
    split = DeviceSplit(arrays.images, arrays.masks, torch.device("cpu"), channels_last=True)
    options = dict(batch_size=2, num_classes=3, autocast=torch.autocast("cpu", enabled=False))
    whole = evaluate(model, make_loss(config), split, **options)
    assert evaluate(model, make_loss(config), split, window=(32, 48), stride=(21, 32), **options) == whole
    windowed = evaluate(model, make_loss(config), split, window=(16, 24), **options)
    assert windowed != whole and 0 <= windowed["miou"] <= 1
    streamed = StreamedSplit(arrays, torch.device("cpu"), channels_last=True)
    assert evaluate(model, make_loss(config), streamed, window=(16, 24), **options) == windowed
