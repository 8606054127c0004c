"""`study predict`: a study's model on new images; class-id masks, overlays and, given ground truth, mIoU.

Each image is read and brought to the study's working resolution exactly as the training cache
does (any PIL mode to RGB, bilinear resize with antialiasing, ImageNet normalisation of the uint8
pixels), and the model runs on batches of them as the trial's validation did (its memory format,
its `amp` setting on the chosen device). The logits, not the class masks, are then resized back
to each image's original size (bilinear), and the mask is their argmax there: interpolating class
scores draws smooth boundaries, as the model itself does when it brings its 1/4-resolution
logits up to its input size, where resizing a mask (nearest neighbour) would draw the working
resolution's blocks.

With ground truth (`masks_dir`, in the dataset's own encoding, read by the dataset's own reader),
the overall mIoU is computed twice from one confusion matrix over all images, as the study's
validation computes it (absent classes count 0): at the working resolution, against the masks
resized as the training cache resizes them (so on the study's validation images it equals the
val mIoU the study recorded for those weights), and at the original size. Per image, the mean
IoU over the classes present in its ground truth or prediction, at both sizes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from study.errors import StudyError
from study.models.checkpoints import WHICH_DOC
from study.models.load import StudyModel, load_study_model
from trainables.errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SUMMARY_FILE = "predictions.json"
MASKS, OVERLAYS = "masks", "overlays"
SHOWN = 5  # failed images named in the closing line


@dataclass(frozen=True)
class Input:
    path: Path
    name: str  # where its outputs go under --out, without suffix: its path inside a given folder, or its stem


def list_inputs(paths: list[str], exclude: Path | None = None) -> tuple[list[Input], list[str]]:
    """(images in the order given, folders' contents sorted by path; files in folders not named as images).

    Files under `exclude` (the output folder, when it lies inside an image folder) are left out.
    """
    inputs, ignored = [], []
    exclude = exclude.resolve() if exclude is not None else None
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                relative = file.relative_to(path)
                if any(part.startswith(".") for part in relative.parts) or \
                        (exclude is not None and file.resolve().is_relative_to(exclude)):
                    continue
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    inputs.append(Input(file, str(relative.with_suffix(""))))
                else:
                    ignored.append(str(file))
        elif path.exists():
            inputs.append(Input(path, path.stem))  # named explicitly: tried whatever its suffix
        else:
            raise StudyError(f"--images: {given}: no such file or folder")
    if not inputs:
        raise StudyError(f"--images: no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(paths)}")
    seen: dict[str, Path] = {}
    for item in inputs:
        if item.name in seen:
            raise StudyError(f"--images: {seen[item.name]} and {item.path} would write the same output "
                             f"{item.name}.png; give them in separate runs")
        seen[item.name] = item.path
    return inputs, ignored


def writable_folder(out: str | os.PathLike, option: str = "--out") -> Path:
    """`out` created if missing, and proved writable before any work is done."""
    folder = Path(out).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".segstudy-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise StudyError(f"{option} {out}: cannot be written ({error.strerror or error})") from None
    return folder


def mask_index(masks_dir: str | os.PathLike) -> dict[str, Path]:
    """File name -> path of every file under the ground-truth folder (Cityscapes keeps one folder per city)."""
    root = Path(masks_dir).expanduser()
    if not root.is_dir():
        raise StudyError(f"--masks {masks_dir}: not a folder")
    index: dict[str, Path] = {}
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        index.setdefault(file.name, file)
    return index


def predict_study(storage, name: str, images: list[str], out, *, trial: str | None = None, which: str = "best",
                  device: str = "auto", batch_size: int | None = None, masks: str | None = None,
                  log=None, results=None) -> dict:
    """Predict every image; returns the summary also written to <out>/predictions.json.

    Images that cannot be read (or whose ground truth cannot) are named on `log` and skipped; a
    StudyError at the end names them, after everything else has been written.
    """
    from study.reading.results import load_results
    from trainables.engine import resolve_device

    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    if batch_size is not None and batch_size < 1:
        raise StudyError(f"--batch-size: expected an integer >= 1, got {batch_size}")
    inputs, ignored = list_inputs(images, exclude=Path(out).expanduser())
    ground_truth = mask_index(masks) if masks is not None else None
    folder = writable_folder(out)
    results = results or load_results(storage, name)
    try:
        torch_device = str(resolve_device(device))
    except Exception as error:  # a ConfigError, or torch's own for a malformed name
        raise StudyError(f"--device {device}: {str(error).splitlines()[0]}") from None
    model = load_study_model(results, trial=trial, which=which, device=torch_device)
    for note in model.notes:
        log(f"note: {note}")
    if ignored:
        log(f"ignored {len(ignored)} file(s) that are not images by their suffix: " + ", ".join(ignored[:SHOWN])
            + (", ..." if len(ignored) > SHOWN else ""))
    run = _Run(model, folder, ground_truth, log)
    size = batch_size or model.config.batch_size
    progress = _Progress(len(inputs), log)
    for start in range(0, len(inputs), size):
        run.batch(inputs[start : start + size])
        progress.update(min(start + size, len(inputs)))
    summary = run.summary(model, torch_device, size)
    (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


class _Run:
    def __init__(self, model: StudyModel, folder: Path, ground_truth: dict | None, log):
        import torch

        from trainables.engine import autocast_context

        self.model, self.folder, self.ground_truth, self.log = model, folder, ground_truth, log
        self.classes = len(model.class_names)
        self.autocast = autocast_context(model.config, model.device)  # as the trial validated on this device
        # Ids past the classes (none are predicted) stay black.
        self.colours = np.zeros((256, 3), dtype=np.uint8)
        self.colours[: self.classes] = np.array(model.palette, dtype=np.uint8)
        self.flat_palette = self.colours.ravel().tolist()
        self.confusion = {"working": torch.zeros(self.classes, self.classes, dtype=torch.int64),
                          "original": torch.zeros(self.classes, self.classes, dtype=torch.int64)}
        self.done: list[dict] = []
        self.failed: list[dict] = []

    def batch(self, inputs: list[Input]) -> None:
        import torch

        from trainables.data.cache import open_rgb, resize_label
        from trainables.metrics import confusion_matrix, summarize

        loaded = []
        for item in inputs:
            try:
                image = open_rgb(str(item.path))
            except DatasetError as error:
                self._fail(item, str(error))
                continue
            truth, truth_file, problem = self._truth(item, image) if self.ground_truth is not None else (None,) * 3
            loaded.append((item, image, (truth, truth_file), problem))
        if not loaded:
            return
        size = self.model.input_size
        batch = self.model.preprocess([image for _, image, _, _ in loaded])
        with torch.no_grad(), self.autocast:
            logits = self.model.model(batch)
        logits = logits.float()
        working = logits.argmax(1).cpu()  # exactly what the trial's validation counted
        for index, (item, image, (truth, truth_file), problem) in enumerate(loaded):
            with torch.no_grad():
                full = torch.nn.functional.interpolate(logits[index : index + 1], size=(image.height, image.width),
                                                       mode="bilinear", align_corners=False)
            prediction = full.argmax(1)[0].to(torch.uint8).cpu().numpy()
            entry = {"image": str(item.path), "size": [image.height, image.width]}
            entry.update(self._write(item, image, prediction))
            if truth is not None:
                per_image = {}
                for where, predicted, target in (("working", working[index], resize_label(truth, size)),
                                                 ("original", torch.from_numpy(prediction), truth)):
                    confusion = confusion_matrix(predicted, torch.from_numpy(np.array(target)), self.classes)
                    self.confusion[where] += confusion
                    per_image[where] = summarize(confusion)
                entry["ground_truth"] = truth_file
                entry["miou_present"] = {where: values["miou_present"] for where, values in per_image.items()}
                entry["iou"] = {where: values["iou"] for where, values in per_image.items()}
            elif problem is not None:
                entry["ground_truth_error"] = problem
                self._fail(item, problem, predicted=True)
            self.done.append(entry)

    def _truth(self, item: Input, image) -> tuple[np.ndarray | None, str | None, str | None]:
        """(class ids, their file, None) or (None, None, what is wrong)."""
        from trainables.data import label_files

        candidates = label_files(self.model.declaration, item.path.name)
        for file_name, reader in candidates:
            path = self.ground_truth.get(file_name)
            if path is None:
                continue
            try:
                classes = reader(str(path))
            except DatasetError as error:
                return None, None, str(error)
            if classes.shape != (image.height, image.width):
                return None, None, (f"ground truth {path} is {classes.shape[1]}x{classes.shape[0]} (width x height) "
                                    f"but its image is {image.width}x{image.height}")
            return classes, str(path), None
        return None, None, f"no ground truth for it under --masks (expected {' or '.join(n for n, _ in candidates)})"

    def _write(self, item: Input, image, prediction: np.ndarray) -> dict:
        from PIL import Image

        mask_path = self.folder / MASKS / f"{item.name}.png"
        overlay_path = self.folder / OVERLAYS / f"{item.name}.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        overlay_path.parent.mkdir(parents=True, exist_ok=True)
        mask = Image.fromarray(prediction)  # uint8: mode L
        mask.putpalette(self.flat_palette)  # mode P: pixel values are class ids, drawn in the dataset's colours
        mask.save(mask_path)
        original = np.asarray(image)
        blended = (original.astype(np.float32) * 0.5 + self.colours[prediction].astype(np.float32) * 0.5)
        side_by_side = np.concatenate([original, blended.round().astype(np.uint8)], axis=1)
        Image.fromarray(side_by_side).save(overlay_path)
        return {"mask": str(mask_path), "overlay": str(overlay_path)}

    def _fail(self, item: Input, reason: str, predicted: bool = False) -> None:
        self.failed.append({"image": str(item.path), "error": reason, "predicted": predicted})
        self.log(f"skipped {item.path}: {reason}" if not predicted else
                 f"not evaluated {item.path} (its prediction is written): {reason}")

    def summary(self, model: StudyModel, device: str, batch_size: int) -> dict:
        from trainables.metrics import summarize

        evaluated = [e for e in self.done if "miou_present" in e]
        height, width = model.input_size
        summary = {
            "study": model.study, "trial_key": model.trial_key, "which": model.which, "epoch": model.epoch,
            "weights": model.weights, "dataset": model.dataset, "class_names": list(model.class_names),
            "working_resolution": [height, width], "device": device, "batch_size": batch_size,
            "recorded_val_miou": model.val_miou, "images": self.done, "failed": self.failed,
        }
        if self.ground_truth is not None:
            summary["overall"] = {where: {**summarize(confusion), "images": len(evaluated)}
                                  for where, confusion in self.confusion.items()}
        return summary


class _Progress:
    """A line on stderr about every 10% (at most every 2 s, and the last), so logs stay short."""

    def __init__(self, total: int, log):
        self.total, self.log = total, log
        self.started = self.last = time.perf_counter()
        self.next_share = 0.1

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if done >= self.total or (done >= self.next_share * self.total and now - self.last >= 2.0):
            rate = done / max(now - self.started, 1e-9)
            self.log(f"predict: {done}/{self.total} images ({rate:.1f} images/s)")
            self.next_share, self.last = done / self.total + 0.1, now


def format_summary(summary: dict, out) -> str:
    height, width = summary["working_resolution"]
    lines = [f"{summary['trial_key']} ({WHICH_DOC[summary['which']]}, epoch {summary['epoch']}) on "
             f"{len(summary['images'])} image(s); masks in {Path(out) / MASKS}, overlays in {Path(out) / OVERLAYS}"]
    evaluated = [e for e in summary["images"] if "miou_present" in e]
    if "overall" in summary:
        names = [Path(e["image"]).name for e in evaluated]
        width_ = max([len("image"), *map(len, names)])
        lines += ["", f"{'image':<{width_}}  mIoU {height}x{width}  mIoU original  (classes present in the image)"]
        for name, entry in zip(names, evaluated):
            values = entry["miou_present"]
            lines.append(f"{name:<{width_}}  {values['working']:>{len(f'mIoU {height}x{width}')}.4f}  "
                         f"{values['original']:>13.4f}")
        overall = summary["overall"]
        recorded = summary["recorded_val_miou"]
        lines += ["", f"overall mIoU over {overall['working']['images']} image(s) (one confusion matrix, absent "
                      f"classes 0, as the study validates): {overall['working']['miou']:.6f} at {height}x{width}, "
                      f"{overall['original']['miou']:.6f} at the original sizes"]
        if recorded is not None:
            lines.append(f"the study recorded val mIoU {recorded:.6f} for these weights on its validation split "
                         f"at {height}x{width}")
    return "\n".join(lines)



def failure_line(summary: dict) -> str | None:
    failed = summary["failed"]
    if not failed:
        return None
    total = len(summary["images"]) + sum(1 for f in failed if not f["predicted"])
    names = ", ".join(f["image"] for f in failed[:SHOWN]) + (", ..." if len(failed) > SHOWN else "")
    skipped = sum(1 for f in failed if not f["predicted"])
    unevaluated = len(failed) - skipped
    parts = []
    if skipped:
        parts.append(f"{skipped} of {total} image(s) could not be read and were skipped")
    if unevaluated:
        parts.append(f"{unevaluated} predicted but not evaluated (ground truth missing or unreadable)")
    return "; ".join(parts) + f": {names} (details above and in {SUMMARY_FILE})"
