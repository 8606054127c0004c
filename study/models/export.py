"""`study export-model`: a trial's model as a `torch.export` program that runs with torch alone.

    FILE.pt2          torch.export.load(FILE).module()(images) -> logits [N, K, H, W]; images float32 in
                      [0, 1], NCHW, at the working resolution (H, W), any batch size N; the ImageNet
                      normalisation is part of the program
    FILE.json         what the program needs said: class names and colours, input size and format, the
                      trial's settings and metrics, where the weights came from, versions
    FILE.safetensors  the bare model's state dict (no normalisation), for users who rebuild the model in
                      code with trainables.models.build_model and the settings in FILE.json

Every file is written beside its final name and renamed into place, so an interrupted export
leaves the previous files or none.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from study.errors import StudyError
from study.models.checkpoints import WHICH_DOC
from study.models.load import StudyModel, load_study_model

SUFFIX = ".pt2"
FORMAT = "segstudy exported model 1"
MAX_BATCH = 4096  # the program's declared batch range; the weights do not depend on it


def export_paths(out: str | os.PathLike) -> tuple[Path, Path, Path]:
    path = Path(out).expanduser()
    if path.suffix != SUFFIX:
        raise StudyError(f"--out {out}: expected a file name ending in {SUFFIX} (torch.export's archive)")
    if path.is_dir():
        raise StudyError(f"--out {out}: is a folder; expected a file name ending in {SUFFIX}")
    return path, path.with_suffix(".json"), path.with_suffix(".safetensors")


def _check_writable(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.write-test-{os.getpid()}")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise StudyError(f"--out {path}: cannot be written ({error.strerror or error})") from None


def normalized_module(model: StudyModel):
    """The trial's model behind its input normalisation: float images in [0, 1] in, logits out."""
    import torch
    from torch import nn

    class Normalized(nn.Module):
        def __init__(self, inner: nn.Module, mean, std):
            super().__init__()
            self.model = inner
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.model((images - self.mean) / self.std)

    return Normalized(model.model, model.mean, model.std).eval()


def export_program(model: StudyModel):
    """The torch.export ExportedProgram of `normalized_module(model)`, batch size dynamic."""
    import copy
    import dataclasses

    import torch

    # In the memory format load_model gives (the trial's: channels_last when it trained so), so that
    # the program runs the same kernels: on CPU, FCN-ResNet50's logits (random weights, 64x64) differ by
    # up to 7e-5 between channels_last and contiguous weights, more than the 1e-5 the program promises.
    inner = copy.deepcopy(model.model).to("cpu").eval()
    module = normalized_module(dataclasses.replace(model, model=inner))
    height, width = model.input_size
    # An example batch of 2: torch.export specialises a dimension traced at size 0 or 1.
    example = torch.rand(2, 3, height, width)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    # strict=False traces with Python instead of TorchDynamo: the models' Python control flow depends
    # on static shapes only (the working resolution), so both give the same graph, and non-strict
    # export of SegFormer takes half the time here (13 s instead of 23 s on 2 CPU cores).
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes={"images": {0: batch}}, strict=False)


def sidecar(model: StudyModel, pt2: Path, weights: Path) -> dict:
    from study.planning.plan import package_versions

    height, width = model.input_size
    return {
        "format": FORMAT,
        "study": model.study,
        "trial_key": model.trial_key,
        "which": model.which,
        "which_means": WHICH_DOC[model.which],
        "epoch": model.epoch,
        "recorded_val_miou": model.val_miou,
        "dataset": model.dataset,
        "class_names": list(model.class_names),
        "palette": [list(colour) for colour in model.palette],
        "input": {"shape": ["batch", 3, height, width], "dtype": "float32", "range": [0.0, 1.0], "layout": "NCHW",
                  "colour": "RGB", "normalisation": "folded into the program: (images - mean) / std",
                  "mean": list(model.mean), "std": list(model.std),
                  "resize": "bilinear with antialiasing to the input size, as the study's training did"},
        "output": {"shape": ["batch", len(model.class_names), height, width], "dtype": "float32",
                   "meaning": "logits per class; argmax over dim 1 gives class ids"},
        "program": pt2.name,
        "state_dict": {"file": weights.name, "format": "safetensors",
                       "model": "trainables.models.build_model(TrainConfig.from_dict({**settings, 'pretrain': "
                                "'none', 'freeze': 'none'})); its input is normalised (mean, std above)"},
        "settings": model.settings,
        "metrics": model.metrics,
        "weights_source": model.weights,
        "versions": package_versions(),
    }


def save_program(program, path) -> None:
    import torch

    with warnings.catch_warnings():
        # Saving channels_last (non-contiguous) CPU weights: the archive writer rebuilds each one's
        # storage from its address range and says so; the warning is about weights off the CPU.
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        torch.export.save(program, str(path))


def export_model(storage, name: str, out, *, trial: str | None = None, which: str = "best",
                 results=None) -> tuple[list[Path], list]:
    """Write FILE.pt2, FILE.json and FILE.safetensors; returns (paths, notes)."""
    from study.reading.results import load_results
    from trainables.checkpoint import save_weights

    pt2, json_path, weights_path = export_paths(out)
    _check_writable(pt2)
    model = load_study_model(results or load_results(storage, name), trial=trial, which=which, device="cpu")
    program = export_program(model)
    description = sidecar(model, pt2, weights_path)
    metadata = {"segstudy": FORMAT, "trial_key": model.trial_key, "which": model.which,
                "settings": json.dumps(model.settings)}
    try:
        save_weights(weights_path, model.model.state_dict(), metadata)  # written beside, then renamed
        for path, write in ((pt2, lambda p: save_program(program, p)),
                            (json_path, lambda p: p.write_text(json.dumps(description, indent=1) + "\n"))):
            # torch.export.save wants a name ending in .pt2: keep the suffix
            partial = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
            try:
                write(partial)
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
    except OSError as error:
        raise StudyError(f"--out {out}: cannot be written ({error.strerror or error})") from None
    return [pt2, json_path, weights_path], list(model.notes)
