import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainables import metrics


def test_confusion_matrix_counts_and_skips_ignore_index():
    target = torch.tensor([[0, 0, 1], [2, 255, 1]])
    pred = torch.tensor([[0, 1, 1], [2, 0, 2]])
    confusion = metrics.confusion_matrix(pred, target, 3)
    expected = torch.tensor([[1, 1, 0], [0, 1, 1], [0, 0, 1]])
    assert torch.equal(confusion, expected)
    assert int(confusion.sum()) == 5  # the 255 pixel is not counted


def test_iou_by_hand():
    # rows = target, columns = prediction
    confusion = torch.tensor([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    ious = metrics.iou_per_class(confusion)
    assert math.isclose(float(ious[0]), 3 / (3 + 1 + 2))
    assert math.isclose(float(ious[1]), 4 / (4 + 2 + 1))
    assert float(ious[2]) == 0.0  # absent from target and prediction: IoU 0 (reference protocol)
    summary = metrics.summarize(confusion)
    assert math.isclose(summary["miou"], (3 / 6 + 4 / 7 + 0) / 3)
    assert math.isclose(summary["miou_present"], (3 / 6 + 4 / 7) / 2)
    assert math.isclose(summary["pixel_accuracy"], 7 / 10)


def test_class_predicted_but_absent_from_target_counts_as_zero_iou():
    confusion = torch.tensor([[2, 2], [0, 0]])
    summary = metrics.summarize(confusion)
    assert summary["iou"] == [0.5, 0.0]
    assert summary["miou_present"] == 0.25  # class 1 is "present" through its false positives


def test_empty_confusion_matrix():
    summary = metrics.summarize(torch.zeros(3, 3, dtype=torch.int64))
    assert summary["miou"] == 0.0 and summary["miou_present"] == 0.0 and summary["pixel_accuracy"] == 0.0


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.integers(0, 50), min_size=n * n, max_size=n * n))))
def test_random_confusion_matrices_give_miou_in_unit_interval_equal_to_direct_computation(case):
    n, values = case
    confusion = torch.tensor(values, dtype=torch.int64).reshape(n, n)
    summary = metrics.summarize(confusion)
    direct = []
    for c in range(n):
        tp = values[c * n + c]
        fn = sum(values[c * n + j] for j in range(n)) - tp
        fp = sum(values[i * n + c] for i in range(n)) - tp
        direct.append(tp / (tp + fp + fn) if tp + fp + fn else 0.0)
    assert 0.0 <= summary["miou"] <= 1.0
    assert math.isclose(summary["miou"], sum(direct) / n, abs_tol=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 19), st.integers(1, 300), st.integers(0, 2**32 - 1))
def test_confusion_matrix_equals_counting_the_kept_pixels(num_classes, pixels, seed):
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, (pixels,), generator=generator)
    target[torch.rand(pixels, generator=generator) < 0.2] = metrics.IGNORE_INDEX
    pred = torch.randint(0, num_classes, (pixels,), generator=generator)
    expected = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for t, p in zip(target.tolist(), pred.tolist()):
        if t != metrics.IGNORE_INDEX:
            expected[t, p] += 1
    assert torch.equal(metrics.confusion_matrix(pred, target, num_classes), expected)
