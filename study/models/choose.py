"""Models out of a study: the best trial, its model rebuilt from its record and loaded with its stored weights.

A finished trial keeps the weights after its last epoch (`weights_final`) and those of its best
validated epoch (`weights_best`, the same file when that epoch was the last), as safetensors:
nothing is unpickled. The model is built from the trial's settings in the record; its encoder
weights come from the file, so no pretraining source or ImageNet download is needed.

Which trial is "best" (`study best`, and the default of `load_model`, `predict`, `export-model`):
among the main-stage trials that ended with stored weights (finished, or stopped early by the
scheduler; not diverged, errored, running or pending), the one with the highest value of the
metric (the lowest for a loss); ties go to the trial key that sorts first, so the choice never
depends on the order the trials ran in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from study.errors import StudyError
from study.record import FLOAT, OUTCOME_COLUMNS, Stage, StudyState, TrialState, settings_from_row
from study.storage import open_uri
from trainables.config import TrainConfig
from trainables.errors import ConfigError

WHICH = ("best", "last")
WHICH_DOC = {"best": "the weights of its best validated epoch", "last": "the weights after its last epoch"}
# Metrics a trial can be chosen by: the record's mIoU and loss outcomes; a loss is best when lowest.
BY_METRICS = {c.name: "min" if c.name.endswith("_loss") else "max" for c in OUTCOME_COLUMNS
              if c.type == FLOAT and c.name.endswith(("_miou", "_loss"))}
DEFAULT_BY = "best_val_miou"
# Trials that ended with a final checkpoint of usable weights: candidates for "best".
CANDIDATE_STATES = (TrialState.FINISHED.value, TrialState.EARLY_STOPPED.value)
SHOWN_KEYS = 12  # how many trial keys an error lists


def default_which(by: str) -> str:
    """The checkpoint that a metric describes: best_val_miou the best epoch's weights, final_* the last ones."""
    return "best" if by.startswith("best_") else "last"


# -- choosing a trial ------------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    row: dict  # the trial's record row
    by: str
    mode: str  # max or min
    value: float
    candidates: int  # trials compared
    ties: tuple[str, ...]  # other trials with the same value (the first key in sort order won)
    scope: str  # "study NAME" or "table T, row L"
    not_ended: tuple[str, ...] = ()  # "key (status)" of trials still to end
    notes: tuple[str, ...] = field(default=())


def not_ended_trials(results) -> tuple[str, ...]:
    trials = results.trials
    if trials.empty:
        return ()
    pending = trials[~trials["status"].isin([s.value for s in TrialState if s.ended])]
    return tuple(f"{row.trial_key} ({row.status})" for row in pending.itertuples())


def running_note(results) -> tuple[str, ...]:
    """A line saying which trials have not ended, while the study is not finished."""
    waiting = not_ended_trials(results)
    if results.state == StudyState.FINISHED or not waiting:
        return ()
    shown = ", ".join(waiting[:SHOWN_KEYS]) + (", ..." if len(waiting) > SHOWN_KEYS else "")
    return (f"study {results.name} is {results.state.value}: {len(waiting)} trial(s) have not ended and are left "
            f"out ({shown}); chosen among the trials that ended",)


def choose_best(results, by: str = DEFAULT_BY, table: str | None = None, row: str | None = None) -> Choice:
    """The best trial of the study, or of one row of a declared table (that row's best seed)."""
    if by not in BY_METRICS:
        raise StudyError(f"--by: unknown metric {by!r}; known: {', '.join(BY_METRICS)}")
    trials = results.trials
    main = trials[trials["stage"] == Stage.MAIN.value] if not trials.empty else trials
    scope = f"study {results.name}"
    if table is not None or row is not None:
        main, scope = _row_trials(results, main, table, row)
    if main.empty:
        raise StudyError(f"{scope} has no main-stage trial")
    ordered = ranked_candidates(main, by)
    if ordered.empty:
        counts = main["status"].value_counts()
        described = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items())
        raise StudyError(f"{scope} has no finished trial with stored weights and a {by} yet ({described})")
    best = ordered.iloc[0]
    value = float(best[by])
    ties = tuple(str(k) for k in ordered["trial_key"].iloc[1:][ordered[by].iloc[1:].astype("float64") == value])
    return Choice(row=_row_dict(best), by=by, mode=BY_METRICS[by], value=value,
                  candidates=len(ordered), ties=ties, scope=scope, not_ended=not_ended_trials(results),
                  notes=running_note(results))


def ranked_candidates(trials, by: str = DEFAULT_BY):
    """The trials a best one is chosen from, best first: the rule of the module's docstring, used by `study best`,
    `load_model` and the report alike (ended in a CANDIDATE_STATES state, final weights stored, a finite `by`)."""
    if trials.empty:
        return trials
    values = trials[by].astype("float64")
    eligible = trials[trials["status"].isin(CANDIDATE_STATES) & trials["weights_final"].notna()
                      & values.map(math.isfinite).astype(bool)]
    key = eligible[by].astype("float64") * (-1 if BY_METRICS[by] == "max" else 1)
    order = eligible.assign(_key=key).sort_values(["_key", "trial_key"], kind="stable").index
    return eligible.loc[order]


def _row_trials(results, main, table: str | None, row: str | None):
    from study.record import matching_mask
    from study.report import declared_tables  # read-only: the tables a report shows

    tables = declared_tables(results)
    names = [t.name for t in tables]
    if table is None:
        if len(tables) != 1:
            raise StudyError(f"--row needs --table: study {results.name} declares the tables {', '.join(names)}")
        declaration = tables[0]
    else:
        matches = [t for t in tables if t.name == table]
        if not matches:
            raise StudyError(f"--table: study {results.name} has no table {table!r}; its tables: {', '.join(names)}")
        declaration = matches[0]
    if row is None:  # every row of the table
        mask = None
        for declared in declaration.rows:
            one = matching_mask(main, declared.match)
            mask = one if mask is None else mask | one
        return (main[mask] if mask is not None else main.iloc[0:0]), f"table {declaration.name}"
    labels = [r.label for r in declaration.rows]
    if row not in labels:
        raise StudyError(f"--row: table {declaration.name} has no row {row!r}; its rows: "
                         + ", ".join(repr(label) for label in labels))
    declared = declaration.rows[labels.index(row)]
    return main[matching_mask(main, declared.match)], f"table {declaration.name}, row {row!r}"


def find_trial(results, key: str) -> dict:
    """A trial's record row by its key; unknown keys name the trials that have stored weights."""
    trials = results.trials
    hits = trials[trials["trial_key"] == key] if not trials.empty else trials
    if hits.empty:
        raise StudyError(f"--trial: study {results.name} has no trial {key!r}; {_with_weights(results)}")
    return _row_dict(hits.iloc[0])


def _with_weights(results) -> str:
    trials = results.trials
    usable = [] if trials.empty else \
        list(trials[trials["status"].isin(CANDIDATE_STATES) & trials["weights_final"].notna()]["trial_key"])
    if not usable:
        return "none of its trials has stored weights yet"
    shown = ", ".join(usable[:SHOWN_KEYS]) + (", ..." if len(usable) > SHOWN_KEYS else "")
    return f"trials with stored weights: {shown}"


def model_trial(results, trial: str | None = None, which: str = "best") -> tuple[dict, tuple[str, ...]]:
    """(record row, notes) of the trial whose model is wanted: `trial`, or the study's best by best_val_miou."""
    check_which(which)
    if trial is None:
        choice = choose_best(results)
        return choice.row, choice.notes
    row = find_trial(results, trial)
    status = row.get("status")
    if status not in [s.value for s in TrialState if s.ended]:
        raise StudyError(f"--trial: trial {trial} of study {results.name} is {status}: only ended trials have "
                         f"stored weights; {_with_weights(results)}")
    if status == TrialState.DIVERGED.value and which == "last":
        raise StudyError(f"--which last: trial {trial} diverged at epoch {_int(row.get('diverged_epoch'))}, so its "
                         f"last weights are not finite; use --which best")
    weights_location(row, which)  # it must have them
    return row, ()


def check_which(which: str) -> str:
    if which not in WHICH:
        raise StudyError(f"--which: expected one of {list(WHICH)}, got {which!r}")
    return which


def _row_dict(series) -> dict:
    return {k: (None if _missing(v) else v) for k, v in series.to_dict().items()}


def _missing(value: Any) -> bool:
    import pandas as pd

    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _int(value) -> str:
    return "?" if _missing(value) else str(int(value))


# -- what a checkpoint is ----------------------------------------------------------------------
def checkpoint_epoch(row: dict, which: str) -> int | None:
    """The epoch whose weights `which` names."""
    value = row.get("best_epoch") if which == "best" else row.get("epochs_run")
    return None if _missing(value) else int(value)


def checkpoint_val_miou(row: dict, which: str) -> float | None:
    """The validation mIoU that the study recorded for these weights (None: that epoch was not validated)."""
    if which == "best":
        value = row.get("best_val_miou")
    else:
        validated_last = not _missing(row.get("final_val_epoch")) and row.get("final_val_epoch") == row.get(
            "epochs_run")
        value = row.get("final_val_miou") if validated_last else None
    return None if _missing(value) else float(value)


def outcome_metrics(row: dict) -> dict:
    """The trial's outcome columns (study/record.py), JSON-ready."""
    return {c.name: _plain(row.get(c.name)) for c in OUTCOME_COLUMNS}


def _plain(value):
    if _missing(value):
        return None
    if hasattr(value, "item"):
        value = value.item()
    return value


# -- weights and models ---------------------------------------------------------------------
def trial_config(row: dict) -> TrainConfig:
    """The trial's settings, with the weights to come from its own files (no pretrained source)."""
    settings = settings_from_row(row)
    try:
        return TrainConfig.from_dict({**settings, "pretrain": "none", "freeze": "none"})
    except ConfigError as error:
        raise StudyError(f"trial {row.get('trial_key')}: its recorded settings do not make a model ({error})") from None


def weights_location(row: dict, which: str = "best") -> str:
    check_which(which)
    location = row.get("weights_best" if which == "best" else "weights_final")
    if not isinstance(location, str) or not location:
        raise StudyError(f"trial {row.get('trial_key')} ({row.get('status')}) has no stored {which} weights; "
                         f"only ended trials with a final checkpoint have them")
    return location


def read_weights(location: str) -> dict:
    """A safetensors state dict from a path or URI, read into memory (never unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    filesystem, path = open_uri(location)
    try:
        with filesystem.open_input_stream(path) as stream:
            data = stream.read()
    except (FileNotFoundError, OSError) as error:
        raise StudyError(f"{location}: the weights file cannot be read ({error})") from None
    try:
        return load(data)
    except (SafetensorError, ValueError) as error:
        raise StudyError(f"{location}: not a readable safetensors file ({error})") from None


def load_trial_model(row: dict, which: str = "best", device: str = "cpu"):
    """(model in eval mode, its TrainConfig) of a trial's record row."""
    import torch

    from trainables.models import build_model

    config = trial_config(row)
    location = weights_location(row, which)
    try:
        state = read_weights(location)
    except StudyError as error:
        raise StudyError(f"trial {row.get('trial_key')}, {which} weights: {error}") from None
    model = build_model(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise StudyError(f"trial {row.get('trial_key')}: its {which} weights do not fit its model "
                         f"({str(error).splitlines()[0]})") from None
    return model.to(torch.device(device)).eval(), config


@dataclass(frozen=True, eq=False)
class StudyModel:
    """A trial's model in eval mode (fp32) with what is needed to use it.

    Inputs are RGB images at `input_size` (height, width), normalised with `mean` and `std` (of
    pixel values in [0, 1]); `preprocess` does both as the study's training did. The model returns
    logits [N, len(class_names), H, W] at its input's size.
    """

    model: Any  # torch.nn.Module
    study: str
    trial_key: str
    which: str  # best | last
    epoch: int | None  # the epoch whose weights these are
    dataset: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # RGB per class id
    input_size: tuple[int, int]  # (height, width): the study's working resolution
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    settings: dict  # the trial's settings as recorded (TrainConfig fields)
    metrics: dict  # the trial's outcome columns (study/record.py)
    val_miou: float | None  # the validation mIoU recorded for these weights
    weights: str  # where they were read from
    config: TrainConfig  # the settings the model was built from (weights from the file, so pretrain none)
    notes: tuple[str, ...] = ()

    @property
    def device(self):
        return next(self.model.parameters()).device

    def preprocess(self, images) -> Any:
        """Images (paths or PIL images, one or a list) -> a normalised float batch [N, 3, H, W] on the model's device.

        Read and resized as the study's caches are (any PIL mode to RGB; bilinear with antialiasing).
        """
        import numpy as np
        import torch

        from trainables.data.cache import open_rgb, resize_image
        from trainables.data.device import normalization_constants, normalize_uint8

        if not isinstance(images, (list, tuple)):
            images = [images]
        pixels = np.stack([np.asarray(resize_image(_rgb(image, open_rgb), self.input_size)) for image in images])
        mean, inv_std = normalization_constants(self.device)
        return normalize_uint8(torch.from_numpy(pixels).to(self.device), mean, inv_std, self.config.channels_last)

    def normalize(self, images) -> Any:
        """Float images in [0, 1], [N, 3, H, W] -> the model's input (what an exported program does first)."""
        import torch

        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        memory_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        return ((images - mean) / std).contiguous(memory_format=memory_format)

    def predict(self, images) -> Any:
        """Class ids [N, H, W] at the working resolution of images (as `preprocess` takes them)."""
        import torch

        with torch.no_grad():
            return self.model(self.preprocess(images)).argmax(1)


def _rgb(image, open_rgb):
    from PIL import Image

    return image.convert("RGB") if isinstance(image, Image.Image) else open_rgb(str(image))


def load_study_model(results, trial: str | None = None, which: str = "best", device: str = "cpu") -> StudyModel:
    """The model of `trial` (default: the study's best by best_val_miou) with its `which` weights."""
    import torch

    from trainables.data import class_names, palette
    from trainables.data.device import IMAGENET_MEAN, IMAGENET_STD

    row, notes = model_trial(results, trial, which)
    model, config = load_trial_model(row, which, device)
    if config.channels_last:  # as it trained and validated: the same kernels give the same numbers
        model = model.to(memory_format=torch.channels_last)
    return StudyModel(
        model=model, study=results.name, trial_key=str(row["trial_key"]), which=which,
        epoch=checkpoint_epoch(row, which), dataset=config.dataset,
        class_names=tuple(class_names(config.dataset, config.num_classes)),
        palette=tuple(palette(config.dataset, config.num_classes)), input_size=tuple(config.image_size),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, settings=settings_from_row(row), metrics=outcome_metrics(row),
        val_miou=checkpoint_val_miou(row, which), weights=weights_location(row, which), config=config,
        notes=tuple(notes))


# -- `study best` -------------------------------------------------------------------------------
SETTINGS_NOT_SHOWN = ("data_root", "cache_dir", "device", "num_threads", "fault_epoch", "fault_kind", "fault_once")


def describe_choice(choice: Choice) -> dict:
    """`study best --json`: the trial, which checkpoint, its settings, metrics and weights."""
    row = choice.row
    which = default_which(choice.by)
    return {
        "study": row.get("study"), "scope": choice.scope, "by": choice.by, "mode": choice.mode,
        "value": choice.value, "trial_key": row.get("trial_key"), "config_name": row.get("config_name"),
        "status": row.get("status"), "which": which, "which_means": WHICH_DOC[which],
        "epoch": checkpoint_epoch(row, which), "recorded_val_miou": checkpoint_val_miou(row, which),
        "weights": weights_location(row, which), "settings": settings_from_row(row), "metrics": outcome_metrics(row),
        "candidates": choice.candidates, "ties": list(choice.ties), "not_ended": list(choice.not_ended),
        "notes": list(choice.notes),
    }


def format_choice(description: dict) -> str:
    from trainables.config import TrainConfig

    defaults = TrainConfig().to_dict()
    settings = description["settings"]
    shown = {k: v for k, v in settings.items() if k not in SETTINGS_NOT_SHOWN and v != defaults.get(k)}
    metrics = description["metrics"]
    ties = description["ties"]
    key, which = description["trial_key"], description["which"]
    recorded = description["recorded_val_miou"]
    extreme = "highest" if description["mode"] == "max" else "lowest"
    lines = [
        f"best of {description['scope']} by {description['by']} ({extreme} of {description['candidates']} ended "
        f"trial(s)): {key}",
        f"  {description['by']}: {description['value']:.6f}",
        f"  configuration: {description['config_name']} ({description['status'].replace('_', ' ')})",
        f"  checkpoint: {which}, {description['which_means']} (epoch {description['epoch']})"
        + (f"; val mIoU recorded for it {recorded:.6f}" if recorded is not None else ""),
        f"  weights: {description['weights']}",
        "  settings (those not at TrainConfig's defaults; --json lists all): "
        + ", ".join(f"{k} {_text(v)}" for k, v in shown.items()),
        "  metrics: " + ", ".join(f"{k} {_text(v)}" for k, v in metrics.items() if v is not None),
    ]
    if ties:
        lines.append(f"  tied with {', '.join(ties)} (the trial key that sorts first wins)")
    lines += [f"note: {note}" for note in description["notes"]]
    lines.append(f"use it: study predict {description['study']} --trial {key} --which {which} --images ... --out ...; "
                 f"study export-model {description['study']} --trial {key} --which {which} --out model.pt2")
    return "\n".join(lines)


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value)
