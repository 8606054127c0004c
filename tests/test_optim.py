"""Optimizers, parameter groups and learning-rate schedules (trainables/optim.py), and a run with a recipe."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from trainables.checkpoint import TRIAL_FILE, load_training_state, save_checkpoint
from trainables.config import TrainConfig
from trainables.engine import fit
from trainables.losses import class_weights_from_counts
from trainables.models import build_model
from trainables.models.factory_model import FactoryModel
from trainables.models.transfer import freeze_encoder
from trainables.optim import NORM_LAYERS, make_optimizer, make_scheduler, per_iteration

CPU = torch.device("cpu")


class Tiny(nn.Module):
    """An encoder (convolution, BatchNorm) and a head (convolution, GroupNorm, classifier)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.decoder = nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1))


def closed_form(config: TrainConfig, iteration: int, batches: int) -> float:
    """The learning-rate factor the settings describe, written out: poly x linear warm-up, or per-epoch x warm-up."""
    if config.scheduler == "poly":
        factor = (1 - iteration / (config.epochs * batches)) ** config.poly_power
    elif config.scheduler == "exponential":
        factor = config.gamma ** (iteration // batches)
    elif config.scheduler == "step":
        factor = config.gamma ** (iteration // batches // config.step_size)
    else:
        factor = 1.0
    if iteration < config.warmup_iters:
        factor *= config.warmup_factor + (1 - config.warmup_factor) * iteration / config.warmup_iters
    return factor


def run_schedule(config: TrainConfig, batches: int, model: nn.Module, start=None, iterations=None):
    """The lr of each group at each optimizer step, stepping the schedule as fit does; and the final states."""
    optimizer = make_optimizer(config, model, CPU)
    scheduler = make_scheduler(config, optimizer, batches)
    if start is not None:
        optimizer.load_state_dict(start["optimizer"])
        scheduler.load_state_dict(start["scheduler"])
    seen = []
    for _ in range(config.epochs * batches if iterations is None else iterations):
        seen.append([float(group["lr"]) for group in optimizer.param_groups])
        optimizer.step()
        if per_iteration(config):
            scheduler.step()
        elif len(seen) % batches == 0:
            scheduler.step()
    return seen, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}


SETTINGS = [
    dict(scheduler="poly", poly_power=0.9, warmup_iters=5, warmup_factor=0.1),
    dict(scheduler="poly", poly_power=1.0, warmup_iters=7, warmup_factor=1e-3),  # longer than an epoch
    dict(scheduler="poly", poly_power=2.0),
    dict(scheduler="exponential", gamma=0.9, warmup_iters=4, warmup_factor=0.2),
    dict(scheduler="step", gamma=0.5, step_size=2, warmup_iters=2),
    dict(scheduler="constant", warmup_iters=3, warmup_factor=0.5),
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_the_lr_at_every_iteration_is_the_closed_form(settings):
    config = TrainConfig(epochs=5, lr=0.01, head_lr_mult=10, optimizer="sgd", **settings)
    batches = 3
    seen, _ = run_schedule(config, batches, Tiny())
    assert len(seen) == 15
    for iteration, (encoder_lr, head_lr) in enumerate(seen):
        factor = closed_form(config, iteration, batches)
        assert encoder_lr == pytest.approx(0.01 * factor, rel=1e-12, abs=0), iteration
        assert head_lr == pytest.approx(0.1 * factor, rel=1e-12, abs=0), iteration
    if config.warmup_iters:
        assert seen[0][0] == pytest.approx(0.01 * config.warmup_factor * closed_form(config.replace(
            warmup_iters=0), 0, batches))


@pytest.mark.parametrize("settings", [SETTINGS[1], SETTINGS[3]])
def test_a_resumed_schedule_continues_the_same_sequence(settings):
    config = TrainConfig(epochs=4, lr=0.01, head_lr_mult=10, **settings)
    whole, _ = run_schedule(config, 3, Tiny())
    first, state = run_schedule(config, 3, Tiny(), iterations=5)  # cut off within the second epoch
    rest, _ = run_schedule(config, 3, Tiny(), start=copy.deepcopy(state), iterations=7)  # rebuilt, then loaded
    assert first + rest == whole


@pytest.mark.parametrize("scheduler, expected", [("exponential", torch.optim.lr_scheduler.ExponentialLR),
                                                 ("step", torch.optim.lr_scheduler.StepLR),
                                                 ("constant", torch.optim.lr_scheduler.ConstantLR)])
def test_per_epoch_schedules_without_warm_up_are_torchs_own_stepped_per_epoch(scheduler, expected):
    """The seed protocol's schedules: torch's schedulers over one AdamW group, each epoch's lr as before."""
    config = TrainConfig(epochs=25, scheduler=scheduler)
    model = Tiny()
    optimizer = make_optimizer(config, model, CPU)
    ours = make_scheduler(config, optimizer, batches_per_epoch=7)
    assert type(ours) is expected and not per_iteration(config)
    reference_optimizer = torch.optim.AdamW(list(model.parameters()), lr=1e-3, amsgrad=True, weight_decay=0.01)
    reference = {"exponential": lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.98),
                 "step": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.98),
                 "constant": lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=1.0, total_iters=0)}[scheduler](
        reference_optimizer)
    for _ in range(config.epochs):
        assert optimizer.param_groups[0]["lr"] == reference_optimizer.param_groups[0]["lr"]  # exactly
        optimizer.step(), reference_optimizer.step()
        ours.step(), reference.step()


def test_a_tensor_lr_is_filled_in_place_and_is_the_lr_the_optimizer_steps_with():
    """The CUDA-graph contract, on CPU: the group's lr tensor stays the same object and holds each step's lr."""
    config = TrainConfig(epochs=3, lr=0.1, optimizer="sgd", momentum=0.0, weight_decay=0.0, scheduler="poly",
                         warmup_iters=4, warmup_factor=0.25)
    model = nn.Linear(2, 1, bias=False)
    optimizer = make_optimizer(config, model, CPU)
    scheduler = make_scheduler(config, optimizer, batches_per_epoch=2)
    lr = torch.tensor(float(optimizer.param_groups[0]["lr"]))
    optimizer.param_groups[0]["lr"] = lr  # as cuda_graphs.make_capturable leaves it
    for iteration in range(6):
        with torch.no_grad():
            model.weight.zero_()  # then the step is -weight, to float32's precision
        model.weight.grad = torch.ones_like(model.weight)
        optimizer.step()
        step_taken = -float(model.weight.detach()[0, 0])
        assert step_taken == pytest.approx(0.1 * closed_form(config, iteration, 2), rel=1e-6), iteration
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] is lr
        assert float(lr) == pytest.approx(0.1 * closed_form(config, iteration + 1, 2), rel=1e-6)


# -- optimizers and parameter groups ----------------------------------------------------------------------
def by_identity(parameters) -> set[int]:
    return {id(p) for p in parameters}


def test_the_defaults_make_one_adamw_group_of_every_parameter_in_order():
    model = build_model(TrainConfig(arch="segformer_b0"))
    optimizer = make_optimizer(TrainConfig(arch="segformer_b0"), model, CPU)
    assert type(optimizer) is torch.optim.AdamW and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert group["params"] == list(model.parameters())
    assert (group["lr"], group["weight_decay"], group["amsgrad"]) == (1e-3, 0.01, True)


def test_sgd_head_lr_multiplier_and_no_decay_on_norms_and_biases():
    config = TrainConfig(arch="segformer_b0", optimizer="sgd", lr=0.02, momentum=0.8, nesterov=True,
                         weight_decay=1e-4, head_lr_mult=10, no_decay_norms=True)
    model = build_model(config)
    optimizer = make_optimizer(config, model, CPU)
    assert type(optimizer) is torch.optim.SGD
    norms = {name for name, module in model.named_modules() if isinstance(module, NORM_LAYERS)}
    assert any(".layer_norm" in n for n in norms) and "decoder.fuse_norm" in norms  # LayerNorm and BatchNorm
    expected: dict[tuple[float, float], set[int]] = {}
    for name, parameter in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        lr = 0.02 if name.startswith("encoder.") else 0.2
        decay = 0.0 if owner in norms or leaf == "bias" else 1e-4
        expected.setdefault((lr, decay), set()).add(id(parameter))
    assert len(expected) == 4
    groups = {(round(g["lr"], 12), g["weight_decay"]): by_identity(g["params"]) for g in optimizer.param_groups}
    assert groups == expected
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    for group in optimizer.param_groups:
        assert (group["momentum"], group["nesterov"]) == (0.8, True)


def test_frozen_parameters_are_left_out():
    config = TrainConfig(arch="segformer_b0", head_lr_mult=10)
    model = build_model(config)
    freeze_encoder(model)
    optimizer = make_optimizer(config, model, CPU)
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(1e-2)]
    assert by_identity(optimizer.param_groups[0]["params"]) == by_identity(model.decoder.parameters())


def test_a_model_without_an_encoder_trains_every_parameter_at_lr():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    model = FactoryModel(net, "tests:tiny")
    assert model.encoder is None
    optimizer = make_optimizer(TrainConfig(lr=0.05, head_lr_mult=10, optimizer="adam", weight_decay=0.1), model, CPU)
    assert type(optimizer) is torch.optim.Adam and len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["lr"] == 0.05 and optimizer.param_groups[0]["params"] == list(model.parameters())
    split = make_optimizer(TrainConfig(lr=0.05, weight_decay=0.1, no_decay_norms=True), model, CPU).param_groups
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in split] == [(0.05, 0.1, 2), (0.05, 0.0, 4)]


# -- a run with a recipe ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_pets(tmp_path_factory):
    from trainables.data import synth_dataset

    root = tmp_path_factory.mktemp("small-pets")
    synth_dataset("pets", root, train=8, val=4)
    return root


def recipe(root, tmp_path, **changes) -> TrainConfig:
    values = dict(arch="segformer_b0", dataset="pets", data_root=str(root), cache_dir=str(tmp_path / "cache"),
                  image_size=(32, 32), epochs=4, batch_size=4, val_interval=2, device="cpu", num_threads=1,
                  seed=1, lr=0.01, loss="ce_dice", dice_weight=0.5, optimizer="sgd", momentum=0.9, nesterov=True,
                  weight_decay=1e-4, scheduler="poly", warmup_iters=3, warmup_factor=0.1, head_lr_mult=10,
                  no_decay_norms=True, class_weights="auto")
    values.update(changes)
    return TrainConfig(**values)


def test_a_recipe_trains_records_its_class_weights_and_resumes_exactly(small_pets, tmp_path):
    config = recipe(small_pets, tmp_path)
    folder = tmp_path / "checkpoint"
    kept = {}

    def keep(record, snapshot):
        if record["epoch"] == 2:
            folder.mkdir()
            save_checkpoint(folder, snapshot)
        if snapshot.final:
            kept.update({k: v.clone() for k, v in snapshot.weights().items()})

    whole = fit(config, on_epoch_end=keep)
    assert whole.status == "finished" and len(whole.records) == 4
    assert all(math.isfinite(r["train_loss"]) for r in whole.records)
    assert all(math.isfinite(r["val_loss"]) for r in whole.records if r["validated"])
    # two batches an epoch: the lr of each epoch's first iteration
    assert [r["lr"] for r in whole.records] == pytest.approx([0.01 * closed_form(config, 2 * e, 2) for e in range(4)])
    # class weights from the training masks' histogram, recorded in the result and trial.json
    from trainables.data import SPLITS, load_split

    masks = load_split("pets", small_pets, SPLITS["pets"][0], (32, 32), tmp_path / "cache").masks
    counts = np.bincount(masks.reshape(-1), minlength=256)[:3]
    assert whole.class_weights == pytest.approx(class_weights_from_counts(counts))
    assert json.loads((folder / TRIAL_FILE).read_text())["class_weights"] == whole.class_weights

    resumed_weights = {}
    resumed = fit(config, resume_state=load_training_state(folder),
                  on_epoch_end=lambda record, snapshot: resumed_weights.update(snapshot.weights()))
    def without_timing(records):  # as text: NaN (best_val_miou before a validation) equals itself there
        return json.dumps([{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_second")}
                           for r in records])

    assert without_timing(resumed.records) == without_timing(whole.records)
    assert kept.keys() == resumed_weights.keys()
    assert all(torch.equal(kept[key], resumed_weights[key]) for key in kept)


def test_a_recipe_of_adamw_focal_and_listed_class_weights_trains(small_pets, tmp_path):
    result = fit(recipe(small_pets, tmp_path, epochs=2, optimizer="adamw", nesterov=False, loss="focal",
                        class_weights="0.5,1,2", scheduler="exponential", lr=1e-3))
    assert result.class_weights == [0.5, 1.0, 2.0]
    assert all(math.isfinite(r["train_loss"]) for r in result.records)
