"""The losses (ce, dice, focal, ce_dice) against segmentation-models-pytorch, the ignore index, and class weights."""

import numpy as np
import pytest
import torch
from segmentation_models_pytorch.losses import DiceLoss as SmpDice
from segmentation_models_pytorch.losses import FocalLoss as SmpFocal

from trainables.config import TrainConfig
from trainables.errors import ConfigError, DatasetError
from trainables.losses import (
    CeDiceLoss,
    DiceLoss,
    FocalLoss,
    class_weights_from_counts,
    make_loss,
    pixel_counts,
    resolve_class_weights,
)

IGNORE = 255


def batch(seed: int, classes: int = 4, absent: int | None = 2, shape=(3, 9, 11)):
    """Random logits and masks with about a fifth of the pixels ignored and (optionally) one class absent."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], classes, *shape[1:], generator=generator) * 3
    masks = torch.randint(0, classes, shape, generator=generator)
    if absent is not None:
        masks[masks == absent] = (absent + 1) % classes
    masks[torch.rand(shape, generator=generator) < 0.2] = IGNORE
    return logits, masks


def value_and_grad(loss, logits, masks):
    logits = logits.clone().requires_grad_(True)
    value = loss(logits, masks)
    value.backward()
    return value.detach(), logits.grad


WEIGHTS = [None, [0.5, 2.0, 1.0, 3.0]]


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_dice_equals_smp_dice_loss_with_ignored_pixels(seed, weights):
    logits, masks = batch(seed)
    ours = DiceLoss(None if weights is None else torch.tensor(weights))
    reference = SmpDice(mode="multiclass", ignore_index=IGNORE, class_weights=weights)
    value, grad = value_and_grad(ours, logits, masks)
    expected, expected_grad = value_and_grad(reference, logits, masks)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("gamma", [2.0, 0.5, 0.0])
def test_focal_equals_smp_focal_loss_with_ignored_pixels(gamma, weights):
    logits, masks = batch(3)
    ours = FocalLoss(gamma, None if weights is None else torch.tensor(weights))
    reference = SmpFocal(mode="multiclass", gamma=gamma, ignore_index=IGNORE, class_weights=weights)
    value, grad = value_and_grad(ours, logits, masks)
    expected, expected_grad = value_and_grad(reference, logits, masks)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("loss", ["ce", "dice", "focal", "ce_dice"])
def test_ignored_pixels_contribute_nothing(loss):
    """Changing the logits of ignored pixels changes neither the loss nor any gradient; theirs are zero."""
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0])
    criterion = make_loss(TrainConfig(loss=loss, dice_weight=0.7), weights).pixel_loss
    logits, masks = batch(4)
    ignored = (masks == IGNORE).unsqueeze(1).expand_as(logits)
    assert ignored.any()
    changed = torch.where(ignored, torch.randn(logits.shape, generator=torch.Generator().manual_seed(9)) * 50, logits)
    value, grad = value_and_grad(criterion, logits, masks)
    other_value, other_grad = value_and_grad(criterion, changed, masks)
    torch.testing.assert_close(value, other_value)
    torch.testing.assert_close(grad, other_grad)
    assert torch.all(grad[ignored] == 0) and torch.any(grad[~ignored] != 0)


def test_ce_dice_is_weighted_cross_entropy_plus_dice_weight_times_dice():
    logits, masks = batch(5)
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0])
    combined = CeDiceLoss(0.3, weights)(logits, masks)
    ce = torch.nn.functional.cross_entropy(logits, masks, weight=weights, ignore_index=IGNORE)
    dice = SmpDice(mode="multiclass", ignore_index=IGNORE, class_weights=weights.tolist())(logits, masks)
    torch.testing.assert_close(combined, ce + 0.3 * dice)


def test_make_loss_adds_the_aux_heads_loss_with_its_weight():
    logits, masks = batch(6)
    aux, _ = batch(7)
    for name in ("ce", "dice", "focal", "ce_dice"):
        loss = make_loss(TrainConfig(arch="fcn_resnet50", loss=name, aux_loss_weight=0.4))
        alone = loss.pixel_loss
        torch.testing.assert_close(loss({"out": logits, "aux": aux}, masks),
                                   alone(logits, masks) + 0.4 * alone(aux, masks))
        torch.testing.assert_close(loss({"out": logits}, masks), alone(logits, masks))


def test_a_batch_without_labelled_pixels_gives_zero_dice_and_focal_loss():
    logits, masks = batch(8)
    masks[:] = IGNORE
    assert DiceLoss()(logits, masks) == 0 and FocalLoss()(logits, masks) == 0


# -- class weights -------------------------------------------------------------------------------------------
def test_median_frequency_balancing_of_a_histogram():
    # frequencies 0.1, 0.3, 0, 0.6; the median of the present classes' is 0.3; the absent class gets 1
    assert class_weights_from_counts([10, 30, 0, 60]) == pytest.approx([0.3 / 0.1, 0.3 / 0.3, 1.0, 0.3 / 0.6])
    # an even number of present classes: the median is the mean of the middle two
    assert class_weights_from_counts([1, 3]) == pytest.approx([0.5 / 0.25, 0.5 / 0.75])
    with pytest.raises(DatasetError, match="class_weights auto: the training split has no labelled pixel"):
        class_weights_from_counts([0, 0, 0])


def test_pixel_counts_of_tensor_and_memory_mapped_masks_leave_out_the_ignore_index(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 3, size=(70, 5, 6), dtype=np.uint8)
    masks[rng.random(masks.shape) < 0.3] = IGNORE
    expected = [int((masks == c).sum()) for c in range(3)]
    np.save(tmp_path / "masks.npy", masks)
    mapped = np.load(tmp_path / "masks.npy", mmap_mode="r")
    assert pixel_counts(mapped, 3) == expected
    assert pixel_counts(torch.from_numpy(masks), 3, chunk=8) == expected
    assert pixel_counts(torch.from_numpy(masks), 4) == expected + [0]


def test_resolve_class_weights_none_auto_and_a_list():
    masks = torch.tensor([[[0, 0, 0, 1], [1, 2, IGNORE, IGNORE]]], dtype=torch.uint8)  # 3, 2 and 1 pixels
    counted = []

    def counts():
        counted.append(True)
        return pixel_counts(masks, 3)

    assert resolve_class_weights(TrainConfig(class_weights="none"), counts) is None
    assert resolve_class_weights(TrainConfig(class_weights="1,2.5,0"), counts) == [1.0, 2.5, 0.0]
    assert not counted  # the masks are read for auto only
    assert resolve_class_weights(TrainConfig(class_weights="auto"), counts) == \
        pytest.approx(class_weights_from_counts([3, 2, 1]))
    with pytest.raises(ConfigError, match="class_weights: 2 weights given for 3 classes"):
        resolve_class_weights(TrainConfig(class_weights="1,2"), counts)  # pets: 3 classes by its preset
