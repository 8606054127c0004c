"""`study report`: tables over seeds, Welch's test, partial studies, figures and compare mode.

The studies here are folders written by tests/fake_study.py in the service's own layout,
so the report is tested through the real loader on real files; the pretraining section and
the report command as a user runs it are checked on a copy of the session's finished tiny study.
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from study.analysis import figures, render, report, significance, tables
from study.analysis.predictions import MASK_IMAGES
from study.errors import StudyError
from study.models.choose import choose_best
from study.planning.plan import Plan
from study.reading.results import load_results
from study.storage import Storage
from tests.fake_study import epoch_records, fake_trial, write_fake_study
from tests.fake_study import table as declared_table
from tests.study_helpers import study_env

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


FCN_TABLE = declared_table("fcn", [("FCN from scratch", {"config_name": "fcn_scratch"}),
                                    ("FCN (pretrained)", {"arch": "fcn_resnet50", "pretrain": "imagenet"})],
                   title="FCN on Oxford-IIIT Pet")


def fcn_study(root: Path, name: str = "fcn", shift: float = 0.0, tables=(FCN_TABLE,)) -> tuple[Storage, list[dict]]:
    trials = [fake_trial("fcn_scratch", seed, [0.40 + shift + 0.01 * seed, 0.45 + shift + 0.02 * seed])
              for seed in range(3)]
    trials += [fake_trial("fcn_pretrained", seed, [0.70 + shift - 0.02 * seed, 0.65 + shift + 0.02 * seed],
                          pretrain="imagenet") for seed in range(3)]
    return write_fake_study(root, name, trials, tables=tables), trials


# -- tables ---------------------------------------------------------------------------
def test_table_cells_are_mean_std_and_count_of_the_epoch_data(tmp_path):
    storage, trials = fcn_study(tmp_path)
    table, = tables.build_tables(load_results(storage, "fcn"), [FCN_TABLE])
    assert table.columns == ("train_loss", "train_miou", "val_loss", "val_miou", "best_val_miou")
    for row, config_name in zip(table.rows, ["fcn_scratch", "fcn_pretrained"]):
        records = [epoch_records(t) for t in trials if t["config_name"] == config_name]
        validated = [[r for r in rs if r["validated"]] for rs in records]
        expected = {
            "train_loss": [rs[-1]["train_loss"] for rs in records],
            "train_miou": [rs[-1]["train_miou"] for rs in records],
            "val_loss": [vs[-1]["val_loss"] for vs in validated],
            "val_miou": [vs[-1]["val_miou"] for vs in validated],
            "best_val_miou": [max(v["val_miou"] for v in vs) for vs in validated],
        }
        for metric, values in expected.items():
            summary = row.summaries[metric]
            assert summary.n == 3
            assert summary.mean == pytest.approx(statistics.mean(values))
            assert summary.std == pytest.approx(statistics.stdev(values))
        assert sorted(row.best_epochs) == sorted(max(vs, key=lambda v: v["val_miou"])["epoch"] for vs in validated)
        assert (row.finished, row.total, row.partial) == (3, 3, False)
    assert table.rows[1].best_epochs.count(2) == 2  # pretrained seeds 0 and 1 peak before the last epoch


def test_markdown_labels_final_and_best_and_names_the_test(tmp_path):
    storage, _ = fcn_study(tmp_path)
    path = report.write_report(load_results(storage, "fcn"), tmp_path / "out")
    text = path.read_text()
    assert "val mIoU (final epoch)" in text and "best val mIoU (epoch)" in text
    assert "Welch" in text and "baseline" in text
    assert "yes (p" in text  # 0.45 vs 0.68 over three seeds each
    scratch = statistics.mean([0.45, 0.47, 0.49])
    assert f"{scratch:.4f} ± {statistics.stdev([0.45, 0.47, 0.49]):.4f} (n=3)" in text
    assert "best at epoch 4 (all 3 seeds)" in text  # scratch: every seed best at its last epoch
    assert "best at epoch 2 (median; range 2–4)" in text  # pretrained: seeds 0, 1 peak at 2, seed 2 at 4
    csv = pd.read_csv(tmp_path / "out" / "fcn.csv")
    assert set(csv["metric"]) == set(tables.METRIC_SOURCES)
    line = csv[(csv["row"] == "FCN from scratch") & (csv["metric"] == "val_miou")].iloc[0]
    assert (line["mean"], line["n"]) == (pytest.approx(scratch), 3)
    pretrained = csv[(csv["row"] == "FCN (pretrained)") & (csv["metric"] == "val_miou")].iloc[0]
    assert pretrained["p_value_vs_first_row"] < 0.05


def test_difference_within_seed_spread_is_not_significant_and_one_seed_is_not_testable(tmp_path):
    trials = [fake_trial("a", seed, [0.50 + 0.05 * seed]) for seed in range(3)]
    trials += [fake_trial("b", seed, [0.51 + 0.05 * seed]) for seed in range(3)]
    trials += [fake_trial("c", 0, [0.90])]
    storage = write_fake_study(tmp_path, "spread", trials)
    declaration = declared_table("t", [("A", {"config_name": "a"}), ("B", {"config_name": "b"}),
                                       ("C", {"config_name": "c"})])
    table, = tables.build_tables(load_results(storage, "spread"), [declaration])
    headers, cells = tables.table_grid(table)
    verdicts = [line[-1] for line in cells]
    assert verdicts[0] == "baseline"
    assert verdicts[1].startswith("no (p=")
    assert verdicts[2] == "not testable (one seed)"
    assert cells[2][headers.index("val mIoU (final epoch)")] == "0.9000 (n=1)"


def test_numbers_match_with_tolerance(tmp_path):
    trials = [fake_trial("x", 0, [0.5], lr=0.001), fake_trial("y", 0, [0.6], lr=5e-4)]
    storage = write_fake_study(tmp_path, "lr", trials)
    results = load_results(storage, "lr")
    declaration = declared_table("lr", [("1e-3 as text", {"lr": "1e-3"}), ("1e-3", {"lr": 1e-3}),
                                           ("0.0005", {"lr": 0.0005, "arch": "fcn_resnet50"}),
                                           ("nothing", {"lr": 0.01}), ("no such column", {"colour": "red"})])
    table, = tables.build_tables(results, [declaration])
    assert [row.total for row in table.rows] == [1, 1, 1, 0, 0]
    assert table.rows[2].summaries["val_miou"].values == (0.6,)
    assert any("no trial of this study matches" in note for note in table.notes)


def test_partial_study_counts_and_lists_trials_left_out(tmp_path):
    trials = [fake_trial("a", 0, [0.5, 0.6]), fake_trial("a", 1, [0.55, 0.62]),
              fake_trial("a", 2, [0.3], status="errored", error="RuntimeError: CUDA out of memory", epochs_planned=4),
              fake_trial("a", 3, [0.4, 0.5], status="diverged", diverge=True),
              fake_trial("b", 0, [0.5], status="running", epochs_planned=4), fake_trial("b", 1, [])]
    declaration = declared_table("t", [("A", {"config_name": "a"}), ("B", {"config_name": "b"})])
    storage = write_fake_study(tmp_path, "partial", trials, state="running", tables=(declaration,))
    results = load_results(storage, "partial")
    path = report.write_report(results, tmp_path / "out")
    table, = tables.build_tables(results, [declaration])
    a, b = table.rows
    assert (a.finished, a.total, b.finished, b.total) == (2, 4, 0, 2)
    assert a.summaries["val_miou"].values == (0.6, 0.62)
    text = path.read_text()
    assert "A †" in text and "2/4" in text and "0/2" in text
    assert "CUDA out of memory" in text and "a-s3 (diverged" in text
    assert "b-s0 (running after 2 of 4 epochs)" in text and "b-s1 (pending)" in text
    assert "not testable (no finished trial)" in text
    assert "The study is not finished: 2 of 6 main trials have finished" in text
    for stem in ("t-loss", "t-miou", "t-class-iou"):
        figure = tmp_path / "out" / "figures" / stem
        assert is_png(figure.with_name(f"{stem}.png")) and is_svg(figure.with_name(f"{stem}.svg"))
    page = (tmp_path / "out" / "report.html").read_text()
    assert "2 of 6 main trials have finished" in page and "b-s1 (pending)" in page


def test_default_table_when_the_study_declares_none(tmp_path):
    storage, _ = fcn_study(tmp_path, tables=())
    results = load_results(storage, "fcn")
    built = tables.build_tables(results, tables.declared_tables(results))
    assert [row.label for row in built[0].rows] == ["fcn_pretrained", "fcn_scratch"]
    assert all(row.total == 3 for row in built[0].rows)


def test_per_class_iou_table_names_the_classes_and_averages_the_last_validated_epochs(tmp_path):
    storage, trials = fcn_study(tmp_path)
    results = load_results(storage, "fcn")
    path = report.write_report(results, tmp_path / "out")
    names = results.plan.class_names("pets", 3)
    text = path.read_text()
    assert "**Per-class IoU**" in text and f"| row | {' | '.join(names)} |" in text
    frame = pd.read_csv(tmp_path / "out" / "fcn.class-iou.csv")
    for config_name, label in (("fcn_scratch", "FCN from scratch"), ("fcn_pretrained", "FCN (pretrained)")):
        last = [[r for r in epoch_records(t) if r["validated"]][-1]["val_iou"] for t in trials
                if t["config_name"] == config_name]
        for class_id, name in enumerate(names):
            line = frame[(frame["row"] == label) & (frame["class_id"] == class_id)].iloc[0]
            values = [iou[class_id] for iou in last]
            assert line["class"] == name and line["n"] == len(values)
            assert line["mean"] == pytest.approx(statistics.fmean(values))
            assert line["std"] == pytest.approx(statistics.stdev(values))


def test_terminal_text_has_every_row(tmp_path):
    storage, _ = fcn_study(tmp_path)
    built = tables.build_tables(load_results(storage, "fcn"), [FCN_TABLE])
    text = render.format_terminal(built)
    assert "FCN on Oxford-IIIT Pet" in text and "FCN from scratch" in text and "FCN (pretrained)" in text


# -- Welch's t-test ------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.floats(0.001, 50.0))
def test_t_tail_matches_closed_forms(t):
    # Two-sided tails of Student's t with 1 (Cauchy) and 2 degrees of freedom have closed forms.
    assert significance.regularized_incomplete_beta(0.5, 0.5, 1 / (1 + t * t)) == pytest.approx(
        1 - 2 / math.pi * math.atan(t), abs=1e-10)
    assert significance.regularized_incomplete_beta(1.0, 0.5, 2 / (2 + t * t)) == pytest.approx(
        1 - t / math.sqrt(2 + t * t), abs=1e-10)


def test_welch_on_two_pairs_has_two_degrees_of_freedom():
    # Equal variances and n=2 each: t = difference / sqrt(2), 2 degrees of freedom.
    t = 3.0 / math.sqrt(2)
    assert significance.welch_t_test([0.0, 2.0], [3.0, 5.0]) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)
    assert significance.welch_t_test([0.5], [0.6, 0.7]) is None
    assert significance.welch_t_test([0.5, 0.5], [0.5, 0.5]) == 1.0
    assert significance.welch_t_test([0.5, 0.5], [0.6, 0.6]) == 0.0
    # Large samples: the 97.5% normal quantile gives p = 0.05.
    big = significance.regularized_incomplete_beta(5e5, 0.5, 1e6 / (1e6 + 1.959964 ** 2))
    assert big == pytest.approx(0.05, abs=1e-4)


# Student's t two-sided critical values (any statistics textbook's table, 3 decimals): P(|T| > t) = alpha.
T_TABLE = [(1, 12.706, 0.05), (1, 63.657, 0.01), (2, 4.303, 0.05), (2, 9.925, 0.01), (5, 2.571, 0.05),
           (5, 4.032, 0.01), (10, 2.228, 0.05), (10, 3.169, 0.01), (30, 2.042, 0.05), (30, 2.750, 0.01),
           (120, 1.980, 0.05), (120, 2.617, 0.01)]
# Welch's test by scipy.stats.ttest_ind(a, b, equal_var=False), scipy 1.17.1 (not a dependency: values kept here).
WELCH_REFERENCE = [
    ([0.61, 0.63, 0.60], [0.55, 0.58, 0.57], 0.020092107013114417),
    ([0.41, 0.45, 0.40, 0.47, 0.44], [0.43, 0.49, 0.50], 0.207682027643743),
    ([1.0, 2.0, 3.0, 4.0], [2.5, 3.5, 6.0, 8.0, 9.5, 11.0], 0.026739485610940913),
    ([0.5012, 0.5020], [0.4990, 0.5001], 0.10557404026981666),
]


@pytest.mark.parametrize(("dof", "t", "alpha"), T_TABLE)
def test_t_tail_matches_the_printed_table_of_critical_values(dof, t, alpha):
    p = significance.regularized_incomplete_beta(dof / 2, 0.5, dof / (dof + t * t))
    assert p == pytest.approx(alpha, rel=2e-3)  # the table rounds t to 3 decimals


@pytest.mark.parametrize(("a", "b", "p"), WELCH_REFERENCE)
def test_welch_matches_a_reference_implementation(a, b, p):
    assert significance.welch_t_test(a, b) == pytest.approx(p, rel=1e-9)
    assert significance.welch_t_test(b, a) == pytest.approx(p, rel=1e-9)


# -- figures ---------------------------------------------------------------------------
def is_png(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def is_svg(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 1000 and "<svg" in path.read_text()[:2000]


def linked_figures(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", text)


def assert_every_figure_in_both_formats(out: Path, expected: set[str]) -> None:
    linked = linked_figures((out / "report.md").read_text())
    assert {Path(link).stem for link in linked} >= expected, linked
    for link in linked:
        assert is_png(out / link) and is_svg((out / link).with_suffix(".svg")), link


def test_figures_are_written_and_linked(tmp_path):
    storage, _ = fcn_study(tmp_path)
    path = report.write_report(load_results(storage, "fcn"), tmp_path / "out")
    text = path.read_text()
    assert_every_figure_in_both_formats(tmp_path / "out", {"fcn-loss", "fcn-miou", "fcn-class-iou"})
    assert "not drawn: no row of this table has a finished trial with stored weights yet" in text
    assert "Predicted masks of the best model: not drawn: no main-stage trial has ended with stored weights yet" in text


SEARCH_SETUPS = [(1e-4, "fcn_resnet50", "imagenet"), (1e-3, "segformer_b0", "none"),
                 (3e-3, "segformer_b0", "cityscapes")]


def search_study(root: Path, name: str = "search") -> tuple[Storage, list[dict]]:
    trials = [fake_trial(f"v{i}", 0, [0.25 + 0.1 * i, 0.3 + 0.1 * i], lr=lr, arch=arch, pretrain=pretrain)
              for i, (lr, arch, pretrain) in enumerate(SEARCH_SETUPS)]
    # 4 epochs planned (the plan's base settings are the first trial's); the scheduler stopped this one after 2
    trials.append(fake_trial("v3", 0, [0.2], lr=2e-3, arch="segformer_b0", pretrain="none", status="early_stopped",
                             epochs_planned=4))
    return write_fake_study(root, name, trials, search={"num_samples": 4}), trials


def write_optuna_study(storage: Storage, name: str, params: list[dict], values: list[float]) -> None:
    """The study's Optuna storage as a searcher leaves it, with whatever parameters it records."""
    import optuna

    distributions = {key: optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True) if key == "lr" else
                     optuna.distributions.CategoricalDistribution(sorted({str(t[key]) for t in params}))
                     for key in params[0]}
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{storage.path(name, 'optuna.db')}",
                                direction="maximize")
    for trial, value in zip(params, values):
        study.add_trial(optuna.trial.create_trial(params=trial, distributions=distributions, value=value))


def test_search_study_gets_the_lr_figure(tmp_path):
    storage, _ = search_study(tmp_path)
    path = report.write_report(load_results(storage, "search"), tmp_path / "out", storage=storage)
    assert_every_figure_in_both_formats(tmp_path / "out", {"search-lr", "trials-loss", "trials-miou"})
    text = path.read_text()
    assert "](figures/search-lr.png)" in text
    # each sample has its own lr, so the default table has a row per trial (best first), not means over them
    results = text.split("**Per-class IoU**")[0]  # the results table (the per-class table has the same rows)
    rows = [line.split(" | ")[0].lstrip("| ") for line in results.splitlines() if line.startswith("| arch=")]
    assert rows == ["arch=segformer_b0/pretrain=cityscapes, lr 0.003", "arch=segformer_b0/pretrain=none, lr 0.001",
                    "arch=fcn_resnet50/pretrain=imagenet, lr 0.0001", "arch=segformer_b0/pretrain=none, lr 0.002 †"]
    # no Optuna storage in this folder: both Optuna figures say so, and the report is still written
    assert "Search: optimisation history: not drawn: no Optuna storage at" in text
    assert "Search: parameter importances: not drawn: no Optuna storage at" in text
    assert not (tmp_path / "search" / "optuna.db").exists()  # looking for it created nothing
    assert "| samples | 4, by optuna" in text and "| lr | loguniform in [0.0001, 0.003] |" in text


@pytest.mark.parametrize("shape", ["one variant parameter", "a parameter per dimension"])
def test_optuna_history_and_importances_whatever_parameters_the_study_holds(tmp_path, shape):
    storage, trials = search_study(tmp_path)
    if shape == "one variant parameter":
        params = [{"variant": t["config_name"], "lr": t["settings"]["lr"]} for t in trials]
    else:  # one parameter per categorical dimension, as a rebuilt Optuna study may record them
        params = [{"arch": t["settings"]["arch"], "pretrain": t["settings"]["pretrain"], "lr": t["settings"]["lr"]}
                  for t in trials]
    write_optuna_study(storage, "search", params * 2, [0.3, 0.4, 0.5, 0.2, 0.35, 0.45, 0.55, 0.25])
    text = report.write_report(load_results(storage, "search"), tmp_path / "out", storage=storage).read_text()
    assert "## Notes" not in text and not re.search(r"Search: [^\n]*not drawn", text), text
    assert_every_figure_in_both_formats(tmp_path / "out", {"search-history", "search-importance"})
    importance = (tmp_path / "out" / "figures" / "search-importance.svg").read_text()
    names = {"variant", "lr"} if shape == "one variant parameter" else {"arch", "pretrain", "lr"}
    assert all(f">{name}<" in importance for name in names)


def test_an_empty_optuna_study_is_noted_not_drawn(tmp_path):
    storage, _ = search_study(tmp_path)
    import optuna

    optuna.create_study(study_name="search", storage=f"sqlite:///{storage.path('search', 'optuna.db')}")
    text = report.write_report(load_results(storage, "search"), tmp_path / "out", storage=storage).read_text()
    assert "Search: optimisation history: not drawn: the Optuna study holds no completed trial yet" in text
    assert "## Notes" not in text


def test_search_scatter_encodes_every_categorical_dimension_and_marks_early_stops(tmp_path):
    from study.planning.record import TRIAL_COLUMNS, typed_frame

    combos = [(p, f, stem) for p in ("none", "cityscapes") for f in ("none", "encoder") for stem in ("paper", "small")
              if not (p == "none" and f == "encoder")]
    rows = [{"trial_key": f"search-{i}", "stage": "main", "arch": "segformer_b0", "pretrain": p, "freeze": f,
             "segformer_stem": stem, "lr": 1e-4 * (i + 1), "best_val_miou": 0.3 + 0.01 * i,
             "status": "early_stopped" if i % 2 else "finished"} for i, (p, f, stem) in enumerate(combos)]
    captured = capture_figures(lambda: figures.search_scatter(
        typed_frame(rows, TRIAL_COLUMNS), ["pretrain", "freeze", "segformer_stem"], tmp_path / "scatter"))
    labels = {"".join(h.get_label().split()) for h in captured[0].legends[0].legend_handles}  # wrapped lines joined
    for p, f, stem in combos:  # each combination in the legend with all three dimensions, stem included
        assert f"pretrain={p},freeze={f},segformer_stem={stem}" in labels
    assert any(label.startswith("stoppedearly") for label in labels)
    assert is_svg(tmp_path / "scatter.svg") and is_png(tmp_path / "scatter.png")
    handles = [h for h in captured[0].legends[0].legend_handles if "pretrain=" in h.get_label()]
    assert len({(h.get_color(), h.get_marker()) for h in handles}) == len(combos)  # a distinct style per variant
    hollow = [c for c in captured[0].axes[0].collections if not np.asarray(c.get_facecolor())[:, 3].any()]
    assert len(hollow) == sum(r["status"] == "early_stopped" for r in rows)


def capture_figures(draw) -> list:
    """The matplotlib Figures that `draw` saves, for checks of what was drawn."""
    captured, original = [], figures.save

    def keep(figure, path):
        captured.append(figure)
        return original(figure, path)

    figures.save = keep
    try:
        draw()
    finally:
        figures.save = original
    return captured


def test_curves_of_hundreds_of_trials_keep_a_bounded_number_of_artists(tmp_path):
    """A search of T trials: one table row per trial, drawn in linear time with O(1) artists, not O(T)."""
    from types import SimpleNamespace

    count, epochs_each = 300, 4
    trial_ids = [f"t{i:04d}" for i in range(count)]
    frame = pd.DataFrame({"trial_id": [t for t in trial_ids for _ in range(epochs_each)],
                          "epoch": list(range(1, epochs_each + 1)) * count})
    frame["train_loss"] = 1.0 / frame["epoch"]
    frame["val_loss"] = frame["train_loss"] + 0.1
    rows = [SimpleNamespace(label=f"trial {i}", trial_ids=(t,) if i % 3 else (), stopped_ids=() if i % 3 else (t,))
            for i, t in enumerate(trial_ids)]
    captured = capture_figures(lambda: figures.learning_curves(rows, figures.EpochIndex(frame), "many", "loss",
                                                               tmp_path / "many"))
    ax = captured[0].axes[0]
    assert len(ax.lines) <= 2 * figures.MAX_ROWS and len(ax.collections) <= 3 * figures.MAX_ROWS + 6
    drawn = sum(len(c.get_segments()) for c in ax.collections if hasattr(c, "get_segments"))
    assert drawn >= 2 * (count - figures.MAX_ROWS)  # every trial is on the figure, train and val


def test_trial_finder_selects_as_matching_mask(tmp_path):
    from study.planning.record import matching_mask

    storage, _ = fcn_study(tmp_path)
    main = tables.main_trials(load_results(storage, "fcn"))
    find = tables.TrialFinder(main)
    for match in ({"trial_key": "fcn_scratch-s1"}, {"config_name": "fcn_pretrained"}, {"config_name": "nothing"},
                  {"lr": "1e-3"}, {"arch": "fcn_resnet50", "pretrain": "imagenet"}, {"colour": "red"},
                  {"amsgrad": True}, {"seed": 2}):
        assert find(match).index.tolist() == main[matching_mask(main, match)].index.tolist(), match


def test_a_failing_figure_is_noted_and_the_rest_is_kept(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ValueError("no ink")

    monkeypatch.setattr(figures, "learning_curves", broken)
    storage, _ = fcn_study(tmp_path)
    text = report.write_report(load_results(storage, "fcn"), tmp_path / "out").read_text()
    assert "## Notes" in text and "ValueError: no ink" in text
    assert is_png(tmp_path / "out" / "figures" / "fcn-class-iou.png")
    assert "no ink" in capsys.readouterr().err


def masks_study(tmp_path, pets_root, rows: int = 3) -> Storage:
    """A study of `rows` SegFormer configurations with stored weights (initial ones: no training needed)."""
    from trainables.config import TrainConfig
    from trainables.models import build_model

    trials = []
    for index in range(rows):
        weights = build_model(TrainConfig(arch="segformer_b0", dataset="pets", seed=index)).state_dict()
        trials += [fake_trial(f"c{index}", seed, [0.5 + 0.1 * index + 0.01 * seed], arch="segformer_b0",
                              weights=weights) for seed in range(2)]
    trials.append(fake_trial("c9", 0, [0.9], arch="segformer_b0"))  # no weights: left out of the masks
    # diverged after the best score of all, with weights: never the best, as `study best` decides
    trials.append(fake_trial("c0", 2, [0.95, 0.0], arch="segformer_b0", diverge=True, weights=weights))
    for trial in trials:
        trial["settings"].update(data_root=str(pets_root), cache_dir=str(tmp_path / "cache"), image_size=[32, 32])
    declaration = declared_table("t", [(f"Row {index}", {"config_name": f"c{index}"}) for index in range(rows)])
    return write_fake_study(tmp_path, "masks", trials, tables=(declaration,))


def test_masks_figure_has_a_prediction_column_per_row_on_the_same_images(tmp_path, pets_root):
    storage = masks_study(tmp_path, pets_root, rows=3)
    text = report.write_report(load_results(storage, "masks"), tmp_path / "out", storage=storage).read_text()
    assert "## Notes" not in text
    svg = (tmp_path / "out" / "figures" / "t-masks.svg").read_text()
    assert all(svg.count(f">{label}<") == 1 for label in ("input", "ground truth", "Row 0", "Row 1", "Row 2"))
    assert len(re.findall(r">IoU \d\.\d\d<", svg)) == 3 * MASK_IMAGES  # one per prediction
    # each row's best seed (seed 1 has the higher best val mIoU), weights of its best epoch
    assert "Row 0 = `c0-s1` (epoch 2); Row 1 = `c1-s1` (epoch 2); Row 2 = `c2-s1` (epoch 2)" in text
    assert is_png(tmp_path / "out" / "figures" / "predicted-masks.png")
    # c9-s0 scores higher but has no weights, c0-s2 diverged: the report's best is `study best`'s
    assert "Best model of the study (the trial `study best` names): trial `c2-s1`" in text
    results = load_results(storage, "masks")
    assert choose_best(results).row["trial_key"] == "c2-s1"
    assert choose_best(results, table="t", row="Row 0").row["trial_key"] == "c0-s1"


def test_image_iou_is_the_mean_over_classes_present():
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 255]], dtype=np.uint8)
    prediction = np.array([[0, 1, 1, 1], [0, 0, 1, 2]], dtype=np.uint8)
    # class 0: 3 / 4, class 1: 3 / 4; class 2 only under the ignored pixel; 255 is left out
    assert figures.image_iou(prediction, truth, 3) == pytest.approx(0.75)
    assert figures.image_iou(truth, truth, 3) == 1.0


# -- compare mode -----------------------------------------------------------------------
def test_compare_two_studies_row_by_row(tmp_path):
    storage, _ = fcn_study(tmp_path, "planned")
    fcn_study(tmp_path, "as_run", shift=0.05)
    results_a, results_b = load_results(storage, "planned"), load_results(storage, "as_run")
    path = report.write_report(results_a, tmp_path / "out", compare=results_b)
    text = path.read_text()
    assert "Compared with study as_run" in text and "difference (as_run − planned)" in text
    assert "+0.0500" in text
    frame = pd.read_csv(tmp_path / "out" / "fcn.compare.csv")
    line = frame[(frame["row"] == "FCN from scratch") & (frame["metric"] == "val_miou")].iloc[0]
    assert line["difference"] == pytest.approx(0.05)
    assert (line["a_n"], line["b_n"]) == (3, 3)

    other = declared_table("fcn", [("FCN from scratch", {"config_name": "fcn_scratch"})])
    fcn_study(tmp_path, "other", tables=(other,))
    with pytest.raises(StudyError, match="different tables"):
        report.write_report(results_a, tmp_path / "out2", compare=load_results(storage, "other"))


def test_compare_shows_where_the_protocols_differ(tmp_path):
    storage, _ = fcn_study(tmp_path, "planned")
    trials = [fake_trial("fcn_scratch", seed, [0.4, 0.45], lr=5e-4) for seed in range(3)]
    trials += [fake_trial("fcn_pretrained", seed, [0.7, 0.65], pretrain="imagenet") for seed in range(2)]
    write_fake_study(tmp_path, "as_run", trials, tables=(FCN_TABLE,))
    text = report.write_report(load_results(storage, "planned"), tmp_path / "out",
                               compare=load_results(storage, "as_run")).read_text()
    section = text[text.index("### Protocol differences with study as_run"):]
    assert "| row | setting | planned | as_run |" in section
    assert "| FCN from scratch | lr | 0.001 | 0.0005 |" in section
    assert "| FCN (pretrained) | seeds | 0, 1, 2 | 0, 1 |" in section
    assert "| FCN from scratch | seeds |" not in section  # equal: not listed
    same = report.write_report(load_results(storage, "planned"), tmp_path / "same",
                               compare=load_results(storage, "planned")).read_text()
    assert "None: both studies planned these rows with the same settings and seeds." in same


def test_each_table_has_its_protocol_from_the_plan(tmp_path):
    storage, trials = fcn_study(tmp_path)
    text = report.write_report(load_results(storage, "fcn"), tmp_path / "out").read_text()
    headers = "| row | model | encoder | optimizer | lr | schedule | epochs | batch size | image size | seeds |"
    assert headers in text
    s = trials[0]["settings"]
    assert (f"| FCN from scratch | fcn_resnet50 | from scratch | AdamW, amsgrad, weight decay {s['weight_decay']:g}"
            f" | 0.001 | exponential, ×{s['gamma']:g} per epoch | 4 (val every 2) | 16 | 64×64 | 0, 1, 2 |") in text
    assert "| FCN (pretrained) | fcn_resnet50 | ImageNet |" in text


def test_best_epochs_are_abbreviated():
    assert tables.format_best_epochs(()) == ""
    assert tables.format_best_epochs((27,)) == "best at epoch 27"
    assert tables.format_best_epochs((4, 4)) == "best at epoch 4 (both seeds)"
    assert tables.format_best_epochs((30, 22, 27, 28, 25)) == "best at epoch 27 (median; range 22–30)"
    assert tables.format_best_epochs((2, 3)) == "best at epoch 2.5 (median; range 2–3)"


def test_report_html_has_every_table_and_embeds_every_figure_escaped(tmp_path):
    hostile = declared_table("fcn", [("<script>alert(1)</script> & co", {"config_name": "fcn_scratch"}),
                                     ("FCN (pretrained)", {"arch": "fcn_resnet50", "pretrain": "imagenet"})],
                             title="FCN <b>on</b> pets")
    storage, _ = fcn_study(tmp_path, tables=(hostile,))
    out = tmp_path / "out"
    markdown = report.write_report(load_results(storage, "fcn"), out).read_text()
    page = (out / "report.html").read_text()
    tables = len(re.findall(r"^\|(---\|)+$", markdown, flags=re.MULTILINE))  # every Markdown table's rule
    assert tables >= 2 and page.count("<table>") == tables  # the protocol, the results, and any other
    figures_linked = linked_figures(markdown)
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert len(images) == len(figures_linked) >= 3
    assert sorted(base64.b64decode(data)[:8] for data in images) == [PNG_MAGIC] * len(images)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert "<b>on</b>" not in page and "FCN &lt;b&gt;on&lt;/b&gt; pets" in page
    csv = re.search(r'<a download="fcn.csv" href="data:text/csv;base64,([A-Za-z0-9+/=]+)">', page)
    assert base64.b64decode(csv.group(1)) == (out / "fcn.csv").read_bytes()
    assert "src=\"figures/" not in page and "href=\"fcn.csv\"" not in page  # nothing outside the file


@pytest.mark.slow
def test_report_of_a_finished_study_as_a_user_runs_it(tmp_path, finished_tiny_study):
    """The tiny study (a pretraining job, two trials) through `study report`: the pretraining section holds the
    plan's settings, every figure is drawn in both formats and embedded in report.html, and Ray is not imported."""
    storage = tmp_path / "studies"
    shutil.copytree(finished_tiny_study, storage)
    out = tmp_path / "report"
    check = ("import sys\nfrom study.cli import main\ncode = main(sys.argv[1:])\n"
             "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'study report imported Ray'\n"
             "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", check, "report", "t", "--out", str(out)], cwd=tmp_path,
                          env=study_env(storage), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = (out / "report.md").read_text()
    assert "not drawn" not in text and "## Notes" not in text, text
    assert_every_figure_in_both_formats(out, {"pretraining-loss", "pretraining-miou", "configurations-loss",
                                              "configurations-miou", "configurations-class-iou",
                                              "configurations-masks", "predicted-masks"})
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(linked_figures(text))
    job, = Plan.from_json((storage / "t" / "plan.json").read_text(), "plan.json").pretrain_jobs
    section = text[text.index("## Pretraining"):text.index("**Results**")]
    s = job.config
    for setting, value in [("dataset", f"{s['dataset']} (19 classes)"),
                           ("image size", "{}×{}".format(*s["image_size"])),
                           ("epochs", f"{s['epochs']} (val every {s['val_interval']})"),
                           ("batch size", str(s["batch_size"])), ("lr", f"{s['lr']:g}"), ("seed", str(s["seed"])),
                           ("encoder exported", f"last epoch (epoch {s['epochs']})"),
                           ("trained", "here, by this study"), ("encoder key", job.key)]:
        assert f"| {setting} | {value} |" in section, setting
    assert f"| optimizer | {'AdamW' if s['optimizer'] == 'adamw' else 'Adam'}" in section
    masks = (out / "figures" / "configurations-masks.svg").read_text()
    assert masks.count(">segformer_scratch<") == 1 and masks.count(">segformer_frozen<") == 1
    assert len(re.findall(r">IoU \d\.\d\d<", masks)) == 2 * 6


def test_the_report_reads_the_optuna_storage_the_searcher_writes(tmp_path):
    from dataclasses import replace

    from study.planning.plan import optuna_storage_url
    from study.tune import decisions, optuna_record  # the live searcher's and the rebuilt study's

    storage, _ = search_study(tmp_path)
    plan = load_results(storage, "search").plan
    explicit = replace(plan, execution=replace(plan.execution, searcher=replace(
        plan.execution.searcher, storage=f"sqlite:///{tmp_path / 'elsewhere.db'}")))
    # the searcher, the study rebuilt after the sweep and the report: one rule
    assert decisions.optuna_storage_url is optuna_record.optuna_storage_url is optuna_storage_url
    assert optuna_storage_url(plan, storage, "search") == f"sqlite:///{storage.path('search', 'optuna.db')}"
    assert optuna_storage_url(explicit, storage, "search") == f"sqlite:///{tmp_path / 'elsewhere.db'}"


@pytest.mark.slow  # a second interpreter importing torch: seconds, like the end-to-end tests
def test_the_prediction_worker_answers_as_the_report_would_predict_itself(tmp_path, pets_root):
    """`python -m study.analysis.predictions`, the process that predicts masks while a report draws: the same masks as
    in-process, and a trial whose weights are gone answered with the error that names the file."""
    from study.analysis.predictions import _json_safe, predict_masks

    storage = masks_study(tmp_path, pets_root, rows=1)
    trials = load_results(storage, "masks").trials
    good = trials[trials["trial_key"] == "c0-s0"].iloc[0].to_dict()
    gone = trials[trials["trial_key"] == "c0-s1"].iloc[0].to_dict()
    Path(gone["weights_best"]).unlink()
    request = {"count": 3, "which": "best", "folder": str(tmp_path), "trials": [_json_safe(good), _json_safe(gone)]}
    done = subprocess.run([sys.executable, "-m", "study.analysis.predictions"], input=json.dumps(request), text=True,
                          capture_output=True, timeout=300, env=study_env(storage))
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    expected = predict_masks(good, 3)
    assert first == {"index": 0, "config": json.loads(json.dumps(expected.config.to_dict()))}
    with np.load(tmp_path / "0.npz", allow_pickle=False) as answered:
        for name, shape in (("images", (3, 32, 32, 3)), ("truth", (3, 32, 32)), ("masks", (3, 32, 32))):
            assert np.array_equal(answered[name], getattr(expected, name)) and answered[name].shape == shape
    assert second["index"] == 1 and gone["weights_best"] in second["error"]


def test_pretraining_reused_from_an_earlier_study_is_named_with_its_setup_and_curves(tmp_path):
    from dataclasses import replace

    from study.planning.plan import PLAN_FILE, PretrainJob, job_trial_key
    from study.storage import ARTIFACTS
    from trainables.config import TrainConfig

    storage, _ = fcn_study(tmp_path)
    config = TrainConfig(arch="segformer_b0", dataset="cityscapes", data_root="/data/cityscapes", epochs=4,
                         batch_size=8, image_size=(32, 64), lr=5e-4, export_encoder="best").to_dict()
    job = PretrainJob(source="cityscapes", key="0123456789abcdef", config=config,
                      trial_key=job_trial_key("cityscapes", "0123456789abcdef", config))
    plan = Plan.from_json(storage.read_text("fcn", PLAN_FILE), PLAN_FILE)
    storage.write_text(replace(plan, pretrain_jobs=[job]).to_json(), "fcn", PLAN_FILE)
    records = epoch_records(fake_trial("pretrain", 0, [0.30, 0.25]))  # best validated epoch: 2
    storage.write_json({"job": {"source": job.source, "key": job.key, "config": config}, "trial_key": job.trial_key,
                        "made_by_study": "earlier", "records": records}, ARTIFACTS, "encoders", job.key, "job.json")
    text = report.write_report(load_results(storage, "fcn"), tmp_path / "out").read_text()
    section = text[text.index("## Pretraining"):text.index("## FCN on Oxford-IIIT Pet")]
    for line in ("| dataset | cityscapes (19 classes) |", "| image size | 32×64 |", "| epochs | 4 (val every 2) |",
                 "| batch size | 8 |", "| lr | 0.0005 |", "| encoder exported | best validated epoch (epoch 2) |",
                 "| trained | reused from study earlier |", f"| encoder key | {job.key} |"):
        assert line in section, line
    assert "| cityscapes, segformer_b0 (paper stem) | 1/1 |" in section
    assert_every_figure_in_both_formats(tmp_path / "out", {"pretraining-loss", "pretraining-miou"})


def test_a_table_named_like_the_reports_own_figures_keeps_its_own(tmp_path):
    table = declared_table("predicted", [("FCN from scratch", {"config_name": "fcn_scratch"})])
    storage, _ = fcn_study(tmp_path, tables=(table,))
    report.write_report(load_results(storage, "fcn"), tmp_path / "out")
    assert_every_figure_in_both_formats(tmp_path / "out", {"predicted-table-loss", "predicted-table-miou"})
