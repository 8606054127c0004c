"""The `study` command: every subcommand is a thin call into study/ or trainables/.

User-facing failures (StudyError, TrainablesError) print one line and exit 2,
without a traceback unless --debug.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from study.errors import StudyError
from trainables.errors import TrainablesError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except (StudyError, TrainablesError) as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="study",
                                     description="Hyperparameter studies for semantic segmentation on Ray Tune.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(metavar="COMMAND")

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

    train = command("train", cmd_train, "one training run outside Ray, written to --out")
    train.add_argument("--arch", default="segformer_b0", choices=["fcn_resnet50", "segformer_b0"])
    train.add_argument("--dataset", default="pets", choices=["pets", "cityscapes"])
    train.add_argument("--data-root", required=True)
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--image-size", type=int, nargs="+", default=[64], metavar="N", help="N or H W")
    train.add_argument("--pretrain", default="none",
                       help="none | imagenet | path to an encoder or ResNet-50 state dict")
    train.add_argument("--freeze", default="none", choices=["none", "encoder"])
    train.add_argument("--segformer-stem", default="paper", choices=["paper", "small_input"])
    train.add_argument("--optimizer", default="adamw", choices=["adamw", "adam"])
    train.add_argument("--scheduler", default="exponential", choices=["exponential", "step", "constant"])
    train.add_argument("--val-interval", type=int, default=2)
    train.add_argument("--max-train-samples", type=int)
    train.add_argument("--max-val-samples", type=int)
    train.add_argument("--export-encoder", default="none", choices=["none", "last", "best"])
    train.add_argument("--device", default="auto")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True, help="folder for config.json, metrics.jsonl and checkpoint/")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")

    data = commands.add_parser("data", help="generate or check datasets").add_subparsers(metavar="ACTION")
    synth = data.add_parser("synth", help="write a generated dataset in the real dataset's on-disk layout")
    synth.set_defaults(handler=cmd_data_synth)
    synth.add_argument("dataset", choices=["pets", "cityscapes"])
    synth.add_argument("--root", required=True)
    synth.add_argument("--train", type=int, default=64)
    synth.add_argument("--val", type=int, default=32)
    synth.add_argument("--seed", type=int, default=0)
    check = data.add_parser("check", help="validate a dataset tree and count pixels per class")
    check.set_defaults(handler=cmd_data_check)
    check.add_argument("dataset", choices=["pets", "cityscapes"])
    check.add_argument("--root", required=True)
    check.add_argument("--image-size", type=int, nargs="+", default=[64], metavar="N", help="N or H W")
    check.add_argument("--json", action="store_true", help="print exactly one JSON object")
    return parser


def _storage(args):
    from study.storage import Storage, default_storage

    return Storage(args.storage or default_storage())


def _image_size(values: list[int]) -> tuple[int, int]:
    if len(values) not in (1, 2):
        raise StudyError(f"--image-size: expected N or H W, got {values}")
    return (values[0], values[-1])


def cmd_run(args) -> int:
    from study.runner import run_study
    from study.spec import load_spec

    spec = load_spec(args.spec, overrides=args.overrides)
    return run_study(spec, _storage(args), name=args.name, address=args.address, dashboard=args.dashboard)


def cmd_resume(args) -> int:
    from study.runner import resume_study

    return resume_study(_storage(args), args.name, address=args.address, dashboard=args.dashboard)


def cmd_status(args) -> int:
    from study.status import format_status, status_summary

    summary = status_summary(_storage(args), args.name)
    print(json.dumps(summary, indent=1, default=str) if args.json else format_status(summary))
    return 0


def cmd_list(args) -> int:
    from study.status import listed_state

    storage = _storage(args)
    names = storage.studies()
    if not names:
        print(f"no studies in {storage.root}", file=sys.stderr)
    for name in names:
        print(f"{name}\t{listed_state(storage, name)}")
    return 0


def cmd_report(args) -> int:
    from study.report import report_study

    path, text = report_study(_storage(args), args.name, out_dir=args.out, compare_name=args.compare)
    print(text)
    print(f"\nreport: {path}")
    return 0


def cmd_export(args) -> int:
    from study.export import export_study

    for path in export_study(_storage(args), args.name, args.out):
        print(f"wrote {path}")
    return 0


def cmd_train(args) -> int:
    from trainables.config import TrainConfig
    from trainables.local_run import train_to_folder

    config = TrainConfig(
        arch=args.arch, dataset=args.dataset, data_root=os.path.abspath(args.data_root), epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, image_size=_image_size(args.image_size), pretrain=args.pretrain,
        freeze=args.freeze, segformer_stem=args.segformer_stem, optimizer=args.optimizer, scheduler=args.scheduler,
        val_interval=args.val_interval, max_train_samples=args.max_train_samples,
        max_val_samples=args.max_val_samples, export_encoder=args.export_encoder, device=args.device, seed=args.seed,
    )
    result = train_to_folder(config, args.out, resume=args.resume)
    print(f"{result.status}: best val mIoU {result.best_val_miou:.4f} at epoch {result.best_epoch}; "
          f"results in {args.out}")
    return 0


def cmd_data_synth(args) -> int:
    from trainables.data import synth_dataset

    path = synth_dataset(args.dataset, args.root, train=args.train, val=args.val, seed=args.seed)
    print(f"wrote a generated {args.dataset} dataset ({args.train} train, {args.val} val) to {path}")
    return 0


def cmd_data_check(args) -> int:
    from trainables.data import check_dataset

    report = check_dataset(args.dataset, args.root, _image_size(args.image_size))
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['dataset']} at {args.root}: OK")
    for split, info in report["splits"].items():
        total = sum(info["pixels"].values()) or 1
        shares = ", ".join(f"{cls}: {count} ({100 * count / total:.1f}%)" for cls, count in info["pixels"].items())
        print(f"  {split}: {info['samples']} samples; pixels per class id: {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
