import json
import math
import os

import pytest
import torch

from trainables.checkpoint import (
    BEST_WEIGHTS,
    ENCODER_FILE,
    FINAL_WEIGHTS,
    STATE_FILE,
    TRIAL_FILE,
    finalize,
    load_training_state,
    load_weights,
    save_checkpoint,
)
from trainables.config import TrainConfig
from trainables.engine import FaultInjected, fit
from trainables.errors import ConfigError
from trainables.local_run import train_to_folder


def tiny_config(root, tmp_path, **changes) -> TrainConfig:
    values = dict(arch="segformer_b0", dataset="pets", data_root=str(root), cache_dir=str(tmp_path / "cache"),
                  image_size=(32, 32), epochs=4, batch_size=16, val_interval=2, device="cpu", seed=3)
    values.update(changes)
    return TrainConfig(**values)


def test_validation_epochs_and_record_fields(pets_root, tmp_path):
    result = fit(tiny_config(pets_root, tmp_path, epochs=3))
    assert [r["epoch"] for r in result.records] == [1, 2, 3]
    assert [r["validated"] for r in result.records] == [False, True, True]  # every 2 epochs and at the last
    validated = result.records[1]
    for key in ("train_loss", "train_miou", "val_loss", "val_miou", "val_miou_present", "lr", "epoch_seconds",
                "images_per_second"):
        assert key in validated and math.isfinite(validated[key]), key
    assert len(validated["val_iou"]) == 3 and all(math.isfinite(v) for v in validated["val_iou"])
    assert result.records[0]["val_miou"] is None and result.records[0]["val_iou"] is None
    assert result.best_epoch in (2, 3)
    assert result.best_val_miou == max(r["val_miou"] for r in result.records if r["validated"])
    # ExponentialLR(0.98) stepped once per epoch
    assert result.records[1]["lr"] == pytest.approx(1e-3 * 0.98)


def test_same_seed_gives_the_same_run_on_cpu(pets_root, tmp_path):
    first = fit(tiny_config(pets_root, tmp_path, epochs=2))
    second = fit(tiny_config(pets_root, tmp_path, epochs=2))
    keys = ("train_loss", "train_miou", "val_loss", "val_miou")
    assert [[r.get(k) for k in keys] for r in first.records] == [[r.get(k) for k in keys] for r in second.records]


def keep_checkpoint_of(epoch: int, folder):
    """An epoch callback that writes the checkpoint of `epoch` to `folder`, as a trial does."""
    def keep(record, snapshot):
        if record["epoch"] == epoch:
            folder.mkdir(exist_ok=True)
            save_checkpoint(folder, snapshot)
    return keep


def test_resume_from_checkpoint_matches_an_uninterrupted_run(pets_root, tmp_path):
    """The kept training state (loaded weights-only) continues the run exactly, with its whole history."""
    config = tiny_config(pets_root, tmp_path, epochs=4, hflip=True, drop_path=0.1)
    folder = tmp_path / "checkpoint"
    uninterrupted = fit(config, on_epoch_end=keep_checkpoint_of(2, folder))
    resumed = fit(config, resume_state=load_training_state(folder))
    assert [r["epoch"] for r in resumed.records] == [1, 2, 3, 4]  # epochs 1-2 come with the state
    keys = ("train_loss", "train_miou", "val_loss", "val_miou", "lr", "val_iou")
    values = [[r.get(k) for k in keys] for r in resumed.records]
    assert values == [[r.get(k) for k in keys] for r in uninterrupted.records]
    assert (resumed.best_val_miou, resumed.best_epoch) == (uninterrupted.best_val_miou, uninterrupted.best_epoch)


def test_a_finished_runs_checkpoint_holds_weights_only(pets_root, tmp_path):
    """The last checkpoint: final weights and the best epoch's (when another), no optimizer state."""
    config = tiny_config(pets_root, tmp_path, epochs=4, lr=0.05)  # a high lr: the last epoch is rarely the best
    folder = tmp_path / "final"
    result = fit(config, on_epoch_end=keep_checkpoint_of(4, folder))
    assert not (folder / STATE_FILE).exists()
    final = load_weights(folder / FINAL_WEIGHTS)
    assert all(isinstance(v, torch.Tensor) for v in final.values()) and "decoder.classifier.weight" in final
    saved = json.loads((folder / TRIAL_FILE).read_text())
    assert saved["kind"] == "final" and [r["epoch"] for r in saved["records"]] == [1, 2, 3, 4]
    assert (folder / BEST_WEIGHTS).exists() == (result.best_epoch != 4) == saved["has_best_weights"]
    weights = sum(v.numel() * v.element_size() for v in final.values())
    stored = sum(f.stat().st_size for f in folder.iterdir())
    assert stored <= 2.2 * weights
    # every file as the umask makes it (safetensors' own writer makes 0600: unreadable to colleagues)
    umask = os.umask(0o022)
    os.umask(umask)
    assert {f.name: f.stat().st_mode & 0o777 for f in folder.iterdir()} == \
        {f.name: 0o666 & ~umask for f in folder.iterdir()}


def test_a_finalisation_cut_off_before_its_last_step_is_finished_by_the_next(pets_root, tmp_path):
    """An early-stopped trial's checkpoint is slimmed after its stage; a driver killed between writing the final
    files and deleting the state must not leave the state behind for good."""
    folder = tmp_path / "stopped"
    fit(tiny_config(pets_root, tmp_path, epochs=3), on_epoch_end=keep_checkpoint_of(2, folder))
    state = (folder / STATE_FILE).read_bytes()
    assert finalize(folder) and not (folder / STATE_FILE).exists()
    (folder / STATE_FILE).write_bytes(state)  # as if the kill came just before the state's deletion
    assert finalize(folder) and not (folder / STATE_FILE).exists()
    assert not finalize(folder) and load_weights(folder / FINAL_WEIGHTS)


def test_fault_hook_raises_at_the_given_epoch(pets_root, tmp_path):
    seen = []
    with pytest.raises(FaultInjected, match="epoch 2"):
        fit(tiny_config(pets_root, tmp_path, fault_epoch=2),
            on_epoch_end=lambda record, state: seen.append(record["epoch"]))
    assert seen == [1]


def test_fault_once_spares_an_attempt_resumed_from_a_checkpoint(pets_root, tmp_path):
    config = tiny_config(pets_root, tmp_path, epochs=3, fault_epoch=3, fault_once=True)
    folder = tmp_path / "checkpoint"
    with pytest.raises(FaultInjected):
        fit(config, on_epoch_end=keep_checkpoint_of(2, folder))
    resumed = fit(config, resume_state=load_training_state(folder))
    assert [r["epoch"] for r in resumed.records] == [1, 2, 3]


def test_non_finite_loss_stops_the_run_as_diverged(pets_root, tmp_path):
    result = fit(tiny_config(pets_root, tmp_path, epochs=4, fault_epoch=2, fault_kind="nan"))
    assert result.status == "diverged"
    assert [r["epoch"] for r in result.records] == [1, 2]
    assert [r["diverged"] for r in result.records] == [False, True]
    assert math.isnan(result.records[-1]["train_loss"]) and not result.records[-1]["validated"]


def test_export_encoder_last_matches_the_trained_model(pets_root, tmp_path):
    kept = {}
    result = fit(tiny_config(pets_root, tmp_path, epochs=2, export_encoder="last"),
                 on_epoch_end=lambda record, snapshot: kept.update(
                     {k: v.clone() for k, v in snapshot.weights().items()}))
    model_state = kept
    assert result.encoder_state is not None
    for key, value in result.encoder_state.items():
        assert torch.equal(value, model_state[f"encoder.{key}"].cpu())


def test_train_to_folder_writes_metrics_checkpoints_and_resumes(pets_root, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(pets_root, tmp_path, epochs=2, export_encoder="best")
    train_to_folder(config, out)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    for name in ("config.json", f"checkpoint/{FINAL_WEIGHTS}", f"checkpoint/{ENCODER_FILE}",
                 f"checkpoint/{TRIAL_FILE}"):
        assert (out / name).stat().st_size > 0, name
    with pytest.raises(ConfigError, match="already holds a run"):
        train_to_folder(config, out)
    with pytest.raises(ConfigError, match="already finished"):
        train_to_folder(config, out, resume=True)
    # a run cut off at epoch 3 continues from its checkpoint of epoch 2
    cut = tmp_path / "cut"
    with pytest.raises(FaultInjected):
        train_to_folder(config.replace(epochs=4, fault_epoch=3, fault_once=True), cut)
    with pytest.raises(ConfigError, match="other settings"):
        train_to_folder(config.replace(epochs=5, fault_epoch=3, fault_once=True), cut, resume=True)
    train_to_folder(config.replace(epochs=4, fault_epoch=3, fault_once=True), cut, resume=True)
    lines = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4]


def test_learning_segformer_beats_predicting_one_class(pets_root, tmp_path):
    """SegFormer-B0 on generated pets learns within about a minute of CPU."""
    config = tiny_config(pets_root, tmp_path, image_size=(48, 48), epochs=12, batch_size=8, lr=2e-3, val_interval=4)
    result = fit(config)
    from trainables.data import SPLITS, load_split

    masks = load_split("pets", pets_root, SPLITS["pets"][1], (48, 48), tmp_path / "cache").masks
    # mIoU of always predicting the most frequent class: its IoU is its pixel share, the others 0
    counts = torch.bincount(torch.from_numpy(masks.copy()).flatten().long(), minlength=3)[:3]
    one_class_miou = float(counts.max() / counts.sum()) / 3
    assert result.best_val_miou > one_class_miou + 0.2, (result.best_val_miou, one_class_miou)


def test_fast_path_switches_stay_within_noise_of_fp32(pets_root, tmp_path):
    """bf16 autocast and channels_last change results by less than another seed does."""
    base = tiny_config(pets_root, tmp_path, epochs=4, val_interval=2, amp="off", channels_last=False)
    fp32, other_seed = fit(base), fit(base.replace(seed=4))
    fast = fit(base.replace(amp="bf16", channels_last=True))
    seed_noise = abs(fp32.best_val_miou - other_seed.best_val_miou)
    assert abs(fast.best_val_miou - fp32.best_val_miou) <= max(2 * seed_noise, 0.03), (
        fast.best_val_miou, fp32.best_val_miou, other_seed.best_val_miou)
    assert fast.records[-1]["train_loss"] == pytest.approx(fp32.records[-1]["train_loss"], rel=0.1)
    # channels_last alone only reorders floating-point sums
    channels_last = fit(base.replace(channels_last=True, epochs=1))
    assert channels_last.records[0]["train_loss"] == pytest.approx(fp32.records[0]["train_loss"], rel=1e-3)
