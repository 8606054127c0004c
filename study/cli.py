"""The `study` command: every subcommand is a thin call into study/ or trainables/.

Whatever the input, a command exits 0, or prints one line naming the file, key or value at
fault and exits 2 (no traceback unless --debug): user-facing failures (StudyError,
TrainablesError), and what the file system, a decoder or a JSON reader says about a path
(OSError, UnicodeDecodeError, JSONDecodeError), are caught here once. Ctrl-C exits 130;
SIGTERM and SIGHUP stop a run the same way and exit 143 and 129 (study/signals.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from study import signals
from study.errors import StudyError
from study.planning.spec import MAX_TRIALS
from trainables.config import CHOICES, PRESET_CLASSES, TrainConfig
from trainables.data.presets import SYNTH_LAYOUTS
from trainables.errors import TrainablesError

DEFAULT = TrainConfig()
USER_ERRORS = (StudyError, TrainablesError, OSError, UnicodeError, json.JSONDecodeError, RecursionError, MemoryError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a bad argument (already said in one line)
        return int(done.code or 0)
    if not getattr(args, "handler", None):
        group = "study data" if getattr(args, "data_group", False) else "study"
        print(f"error: {group}: expected a command; see `{group} --help`", file=sys.stderr)
        return 2
    signals.install()
    try:
        code = args.handler(args) or 0
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"error: {describe(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return signals.exit_code()
    return signals.exit_code(code) if code == 130 else code


def describe(error: BaseException) -> str:
    """One line: the message of our own errors; the path and the reason for the others."""
    if isinstance(error, (StudyError, TrainablesError)):
        return str(error)
    if isinstance(error, OSError):
        where = error.filename if error.filename is not None else ""
        if error.filename2 is not None:
            where = f"{where} -> {error.filename2}"
        reason = error.strerror or str(error) or type(error).__name__
        return f"{where}: {reason}" if where else reason
    if isinstance(error, RecursionError):
        return "the input is nested too deeply to read"
    if isinstance(error, MemoryError):
        return "not enough memory for this input"
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


class Parser(argparse.ArgumentParser):
    """argparse, with a bad argument said in one line (and where to find the usage)."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="study", description="Hyperparameter studies for semantic segmentation on Ray Tune.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(metavar="COMMAND", parser_class=Parser)

    def command(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        sub.set_defaults(handler=handler)
        return sub

    def with_storage(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--storage", default=None,
                         help="folder or URI holding studies (default: $SEGSTUDY_STORAGE, else ./studies)")
        return sub

    run = with_storage(command("run", cmd_run, "run a study file on Ray Tune"))
    run.add_argument("spec", help="study file, e.g. search_spaces/smoke.yaml")
    run.add_argument("--name", help="study name (default: the file's `name`)")
    run.add_argument("--address", help="Ray cluster to use: auto, ray://host:10001, ... "
                                        "(default: $RAY_ADDRESS, else an embedded local Ray)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a key of the study file, e.g. --set train.epochs=2 (repeatable)")
    run.add_argument("--allow-large", action="store_true",
                     help=f"run a grid of more than {MAX_TRIALS:,} trials (refused otherwise, as a likely mistake)")
    run.add_argument("--dashboard", action="store_true",
                     help="start Ray's dashboard (needs ray[default]) and print its URL")

    resume = with_storage(command("resume", cmd_resume, "continue an interrupted study"))
    resume.add_argument("name")
    resume.add_argument("--address", help="Ray cluster to use (default: embedded local Ray)")
    resume.add_argument("--dashboard", action="store_true",
                        help="start Ray's dashboard (needs ray[default]) and print its URL")

    status = with_storage(command("status", cmd_status, "trials by state, best so far, where results are"))
    status.add_argument("name")
    status.add_argument("--json", action="store_true", help="print one JSON object")

    with_storage(command("list", cmd_list, "studies in a storage"))

    report = with_storage(command("report", cmd_report, "tables, figures and CSV of a study; works while it runs"))
    report.add_argument("name")
    report.add_argument("--out", help="folder for report.md, the CSVs and figures/ "
                                      "(default: <storage>/<name>/report/, or ./report-<name> for URI storage)")
    report.add_argument("--compare", metavar="OTHER", help="another study declaring the same tables, side by side")

    export = with_storage(command("export", cmd_export, "trials and epochs as Parquet files; works while it runs"))
    export.add_argument("name")
    export.add_argument("--out", required=True, help="folder for trials.parquet and epochs.parquet")

    best = with_storage(command("best", cmd_best, "the best trial: its checkpoint, settings, metrics and weights"))
    best.add_argument("name")
    best.add_argument("--by", default=None, metavar="METRIC",
                      help="best_val_miou (default; the weights of its best validated epoch), final_val_miou, "
                           "final_val_loss, final_train_miou, final_train_loss (the weights after its last epoch); "
                           "a loss is best when lowest; ties go to the trial key that sorts first")
    best.add_argument("--table", help="only the trials of this declared table (see `study report`)")
    best.add_argument("--row", metavar="LABEL", help="only this row of the table: its best seed")
    best.add_argument("--json", action="store_true", help="print one JSON object")

    def model_options(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("name")
        sub.add_argument("--trial", metavar="KEY", help="a trial key (default: the best trial by best val mIoU, "
                                                        "as `study best` picks it)")
        sub.add_argument("--which", default="best", choices=["best", "last"],
                         help="best: the weights of its best validated epoch (default); last: after its last epoch")
        return sub

    predict = model_options(with_storage(command(
        "predict", cmd_predict, "masks and overlays of a study's model on images; mIoU against ground truth",
    )))
    predict.description = (
        "Class-id masks (PNG, palette-coded in the dataset's colours) and side-by-side overlays of a study's model "
        "on images, both at each image's original size. The model runs at the study's working resolution; its "
        "logits are resized back to the original size (bilinear) and the mask is their argmax there, so "
        "boundaries are smooth rather than blocks of the working resolution. With --masks, per-image and overall "
        "mIoU at the working resolution (as the study validates) and at the original size.")
    predict.add_argument("--images", nargs="+", required=True, metavar="DIR|FILE",
                         help="image files, or folders searched recursively for image files")
    predict.add_argument("--out", required=True, help="folder for masks/, overlays/ and predictions.json")
    predict.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    predict.add_argument("--batch-size", type=int, default=None, metavar="N",
                         help="images per forward pass (default: the trial's batch size)")
    predict.add_argument("--masks", metavar="DIR", help="ground truth in the dataset's own encoding (pets: the "
                                                         "trimaps folder; cityscapes: gtFine/<split>), searched "
                                                         "recursively by file name")

    export_model = model_options(with_storage(command(
        "export-model", cmd_export_model, "a torch.export program (runs with torch alone), JSON sidecar, state dict",
    )))
    export_model.add_argument("--out", required=True, metavar="FILE.pt2",
                              help="the program; FILE.json and FILE.safetensors are written beside it")

    train = command("train", cmd_train, "one training run outside Ray, written to --out")
    train.add_argument("--arch", default=DEFAULT.arch,
                       help="an architecture (fcn_resnet50, segformer_b0, ...; see README) or module:function")
    train.add_argument("--dataset", default=DEFAULT.dataset,
                       help=f"a preset ({', '.join(PRESET_CLASSES)}), or with --spec a dataset that study file "
                            f"declares")
    train.add_argument("--spec", metavar="STUDY.yaml", help="read --dataset's declaration (and root) from this "
                                                             "study file")
    train.add_argument("--data-root", help="the dataset's folder (required without --spec)")
    train.add_argument("--epochs", type=int, default=DEFAULT.epochs)
    train.add_argument("--batch-size", type=int, default=DEFAULT.batch_size)
    train.add_argument("--lr", type=float, default=DEFAULT.lr)
    train.add_argument("--image-size", type=int, nargs="+", default=list(DEFAULT.image_size), metavar="N",
                       help="N or H W")
    train.add_argument("--pretrain", default=DEFAULT.pretrain,
                       help="none | imagenet | path to an encoder or ResNet-50 state dict")
    train.add_argument("--freeze", default=DEFAULT.freeze, choices=CHOICES["freeze"])
    train.add_argument("--segformer-stem", default=DEFAULT.segformer_stem, choices=CHOICES["segformer_stem"])
    train.add_argument("--optimizer", default=DEFAULT.optimizer, choices=CHOICES["optimizer"])
    train.add_argument("--scheduler", default=DEFAULT.scheduler, choices=CHOICES["scheduler"])
    train.add_argument("--val-interval", type=int, default=DEFAULT.val_interval)
    train.add_argument("--max-train-samples", type=int)
    train.add_argument("--max-val-samples", type=int)
    train.add_argument("--export-encoder", default=DEFAULT.export_encoder, choices=CHOICES["export_encoder"])
    train.add_argument("--device", default=DEFAULT.device)
    train.add_argument("--seed", type=int, default=DEFAULT.seed)
    train.add_argument("--out", required=True, help="folder for config.json, metrics.jsonl and checkpoint/")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                       help="any other training setting (trainables/config.py), e.g. --set loss=dice "
                            "--set scheduler=poly (repeatable; the value is read as YAML)")

    data_parser = commands.add_parser("data", help="generate or check datasets")
    data_parser.set_defaults(data_group=True)
    data = data_parser.add_subparsers(metavar="ACTION", parser_class=Parser)
    synth = data.add_parser("synth", help="write a generated dataset in a layout's exact on-disk form and print "
                                           "the declaration that reads it")
    synth.set_defaults(handler=cmd_data_synth)
    synth.add_argument("dataset", metavar="LAYOUT", choices=SYNTH_LAYOUTS, help=f"one of {', '.join(SYNTH_LAYOUTS)}")
    synth.add_argument("--root", required=True)
    synth.add_argument("--train", type=int, default=64)
    synth.add_argument("--val", type=int, default=32)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=int, nargs="+", default=None, metavar="N",
                       help="N or H W (default: pets a size per picture, cityscapes 128x256, others 96x128)")
    check = data.add_parser("check", help="validate a dataset and count pixels per class: every bad file named, "
                                          "binary-mask traps warned about")
    check.set_defaults(handler=cmd_data_check)
    check.add_argument("dataset", metavar="NAME", help=f"a preset ({', '.join(PRESET_CLASSES)}) with --root, or "
                                                        f"a dataset a study file declares with --spec")
    check.add_argument("--root", help="the preset's folder")
    check.add_argument("--spec", metavar="STUDY.yaml", help="the study file that declares NAME (its root too)")
    check.add_argument("--image-size", type=int, nargs="+", default=None, metavar="N",
                       help="N or H W: the working resolution pixels are counted at (default: the study's "
                            "train.image_size with --spec, else 64)")
    check.add_argument("--json", action="store_true", help="print exactly one JSON object")
    return parser


def _storage(args):
    from study.storage import Storage, default_storage

    return Storage(args.storage or default_storage())


def _record(storage, name: str):
    """The study's record, read once for a command; the damage it found is named on stderr, as `status` names it."""
    from study.reading.results import load_results

    results = load_results(storage, name)
    for note in results.notes:
        print(f"note: {note}", file=sys.stderr)
    return results


def _dataset_option(args, root: str | None, option: str):
    """(declaration, root) of `args.dataset`: a dataset `--spec` declares (None: a preset) and its folder."""
    from study.planning.spec import load_spec

    if args.spec is None:
        if args.dataset not in PRESET_CLASSES:
            raise StudyError(f"dataset {args.dataset!r}: not a preset ({', '.join(PRESET_CLASSES)}); name the study "
                             f"file that declares it with --spec")
        if root is None:
            raise StudyError(f"{option}: the {args.dataset} dataset's folder is needed (or --spec)")
        return None, os.path.abspath(root)
    spec = load_spec(args.spec)
    if args.dataset not in spec.datasets:
        raise StudyError(f"{args.spec}: declares no dataset {args.dataset!r} (it declares: "
                         f"{', '.join(sorted(spec.datasets))})")
    declared = spec.datasets[args.dataset]
    return declared.declaration, os.path.abspath(root) if root else declared.root


def _spec_image_size(path: str) -> list[int]:
    from study.planning.spec import load_spec

    return list(load_spec(path).search_base_config()["image_size"])


def _settings(pairs: list[str]) -> dict:
    """--set KEY=VALUE pairs as training settings (values read as YAML)."""
    import yaml

    settings = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise StudyError(f"--set {pair!r}: expected KEY=VALUE, e.g. loss=dice")
        try:
            settings[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            settings[key.strip()] = text
    return settings


def _image_size(values: list[int]) -> tuple[int, int]:
    if len(values) not in (1, 2):
        raise StudyError(f"--image-size: expected N or H W, got {values}")
    return (values[0], values[-1])


def cmd_run(args) -> int:
    from study.planning.spec import load_spec
    from study.running.runner import run_study

    spec = load_spec(args.spec, overrides=args.overrides, allow_large=args.allow_large)
    return run_study(spec, _storage(args), name=args.name, address=args.address, dashboard=args.dashboard)


def cmd_resume(args) -> int:
    from study.running.runner import resume_study

    return resume_study(_storage(args), args.name, address=args.address, dashboard=args.dashboard)


def cmd_status(args) -> int:
    from study.reading.status import format_status, status_summary

    summary = status_summary(_storage(args), args.name)
    print(json.dumps(summary, indent=1, default=str) if args.json else format_status(summary))
    return 0


def cmd_list(args) -> int:
    from study.reading.status import listed_state

    storage = _storage(args)
    names = storage.studies()
    if not names:
        print(f"no studies in {storage.root}", file=sys.stderr)
    for name in names:
        print(f"{name}\t{listed_state(storage, name)}")
    return 0


def cmd_report(args) -> int:
    from study.analysis.report import report_study
    from study.storage import output_folder

    storage = _storage(args)
    storage.require_study(args.name)  # a bad name writes nothing
    if args.out:
        output_folder(args.out, "--out")
    path, text = report_study(storage, args.name, out_dir=args.out, compare_name=args.compare,
                              results=_record(storage, args.name))
    print(text)
    print(f"\nreport: {path}")
    return 0


def cmd_export(args) -> int:
    from study.reading.export import export_study
    from study.storage import output_folder

    storage = _storage(args)
    storage.require_study(args.name)  # a bad name writes nothing
    out = output_folder(args.out, "--out")
    for path in export_study(storage, args.name, out, results=_record(storage, args.name)):
        print(f"wrote {path}")
    return 0


def cmd_best(args) -> int:
    from study.models.choose import DEFAULT_BY, choose_best, describe_choice, format_choice

    results = _record(_storage(args), args.name)
    choice = choose_best(results, by=args.by or DEFAULT_BY, table=args.table, row=args.row)
    description = describe_choice(choice)
    print(json.dumps(description, indent=1) if args.json else format_choice(description))
    return 0


def cmd_predict(args) -> int:
    from study.models.predict import failure_line, format_summary, predict_study

    storage = _storage(args)
    summary = predict_study(storage, args.name, args.images, args.out, trial=args.trial, which=args.which,
                            device=args.device, batch_size=args.batch_size, masks=args.masks,
                            results=_record(storage, args.name))
    print(format_summary(summary, args.out))
    failure = failure_line(summary)
    if failure:
        raise StudyError(failure)
    return 0


def cmd_export_model(args) -> int:
    from study.models.export import export_model

    storage = _storage(args)
    paths, notes = export_model(storage, args.name, args.out, trial=args.trial, which=args.which,
                                results=_record(storage, args.name))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_train(args) -> int:
    from study.storage import output_folder
    from trainables.local_run import train_to_folder

    declaration, root = _dataset_option(args, args.data_root, "--data-root")
    settings = dict(
        arch=args.arch, dataset=args.dataset, data_root=root, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, image_size=_image_size(args.image_size), pretrain=args.pretrain,
        freeze=args.freeze, segformer_stem=args.segformer_stem, optimizer=args.optimizer, scheduler=args.scheduler,
        val_interval=args.val_interval, max_train_samples=args.max_train_samples,
        max_val_samples=args.max_val_samples, export_encoder=args.export_encoder, device=args.device, seed=args.seed,
        num_classes=declaration.num_classes if declaration is not None else None,
    )
    config = TrainConfig.from_dict({**settings, **_settings(args.settings)})
    result = train_to_folder(config, output_folder(args.out, "--out"), resume=args.resume, data=declaration)
    print(f"{result.status}: best val mIoU {result.best_val_miou:.4f} at epoch {result.best_epoch}; "
          f"results in {args.out}")
    return 0


def cmd_data_synth(args) -> int:
    import yaml

    from trainables.data import synth_dataset

    size = _image_size(args.image_size) if args.image_size else None
    mapping = synth_dataset(args.dataset, args.root, train=args.train, val=args.val, seed=args.seed, image_size=size)
    print(f"wrote a generated {args.dataset} dataset ({args.train} train, {args.val} val) to {args.root}")
    entry = {"root": os.path.abspath(args.root), **mapping}
    print("declare it in a study file as:\n" + yaml.safe_dump({"datasets": {"mydata": entry}}, sort_keys=False,
                                                               default_flow_style=None).rstrip())
    return 0


def cmd_data_check(args) -> int:
    from trainables.data import check_dataset

    declaration, root = _dataset_option(args, args.root, "--root")
    size = args.image_size or (_spec_image_size(args.spec) if args.spec else [64])
    report = check_dataset(declaration or args.dataset, root, _image_size(size), name=args.dataset)
    if args.json:
        print(json.dumps(report))
        return 0
    print(format_check(report, root))
    return 0


def format_check(report: dict, root) -> str:
    """`study data check`'s text: each split's samples and pixel shares, then the warnings."""
    lines = [f"{report['dataset']} at {root}: OK"]
    for role, info in report["splits"].items():
        total = sum(info["pixels"].values()) or 1
        shares = ", ".join(f"{cls}: {count} ({100 * count / total:.1f}%)" for cls, count in info["pixels"].items())
        lines.append(f"  {role}: {info['samples']} samples; pixels per class id: {shares}")
    lines += [f"warning: {warning}" for warning in report.get("warnings", ())]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
