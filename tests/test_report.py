"""`study report`: tables over seeds, Welch's test, partial studies, figures and compare mode.

The studies here are folders written by tests/fake_study.py in the service's own layout,
so the report is tested through the real loader on real files.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from study import figures, report
from study.errors import StudyError
from study.results import load_results
from study.storage import Storage
from tests.fake_study import epoch_records, fake_trial, write_fake_study
from tests.fake_study import table as declared_table

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
    table, = report.build_tables(load_results(storage, "fcn"), [FCN_TABLE])
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
    assert "@ epochs" in text
    csv = pd.read_csv(tmp_path / "out" / "fcn.csv")
    assert set(csv["metric"]) == set(report.METRIC_SOURCES)
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
    table, = report.build_tables(load_results(storage, "spread"), [declaration])
    headers, cells = report.table_grid(table)
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
    table, = report.build_tables(results, [declaration])
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
    table, = report.build_tables(results, [declaration])
    a, b = table.rows
    assert (a.finished, a.total, b.finished, b.total) == (2, 4, 0, 2)
    assert a.summaries["val_miou"].values == (0.6, 0.62)
    text = path.read_text()
    assert "A †" in text and "2/4" in text and "0/2" in text
    assert "CUDA out of memory" in text and "a-s3 (diverged" in text
    assert "b-s0 (running after 2 of 4 epochs)" in text and "b-s1 (pending)" in text
    assert "not testable (no finished trial)" in text
    assert "not finished" in text
    assert (tmp_path / "out" / "figures" / "t-curves.png").stat().st_size > 0


def test_default_table_when_the_study_declares_none(tmp_path):
    storage, _ = fcn_study(tmp_path, tables=())
    results = load_results(storage, "fcn")
    tables = report.build_tables(results, report.declared_tables(results))
    assert [row.label for row in tables[0].rows] == ["fcn_pretrained", "fcn_scratch"]
    assert all(row.total == 3 for row in tables[0].rows)


def test_terminal_text_has_every_row(tmp_path):
    storage, _ = fcn_study(tmp_path)
    tables = report.build_tables(load_results(storage, "fcn"), [FCN_TABLE])
    text = report.format_terminal(tables)
    assert "FCN on Oxford-IIIT Pet" in text and "FCN from scratch" in text and "FCN (pretrained)" in text


# -- Welch's t-test ------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.floats(0.001, 50.0))
def test_t_tail_matches_closed_forms(t):
    # Two-sided tails of Student's t with 1 (Cauchy) and 2 degrees of freedom have closed forms.
    assert report.regularized_incomplete_beta(0.5, 0.5, 1 / (1 + t * t)) == pytest.approx(
        1 - 2 / math.pi * math.atan(t), abs=1e-10)
    assert report.regularized_incomplete_beta(1.0, 0.5, 2 / (2 + t * t)) == pytest.approx(
        1 - t / math.sqrt(2 + t * t), abs=1e-10)


def test_welch_on_two_pairs_has_two_degrees_of_freedom():
    # Equal variances and n=2 each: t = difference / sqrt(2), 2 degrees of freedom.
    t = 3.0 / math.sqrt(2)
    assert report.welch_t_test([0.0, 2.0], [3.0, 5.0]) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)
    assert report.welch_t_test([0.5], [0.6, 0.7]) is None
    assert report.welch_t_test([0.5, 0.5], [0.5, 0.5]) == 1.0
    assert report.welch_t_test([0.5, 0.5], [0.6, 0.6]) == 0.0
    # Large samples: the 97.5% normal quantile gives p = 0.05.
    big = report.regularized_incomplete_beta(5e5, 0.5, 1e6 / (1e6 + 1.959964 ** 2))
    assert big == pytest.approx(0.05, abs=1e-4)


# -- figures ---------------------------------------------------------------------------
def is_png(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_figures_are_written_and_linked(tmp_path):
    storage, _ = fcn_study(tmp_path)
    path = report.write_report(load_results(storage, "fcn"), tmp_path / "out")
    text = path.read_text()
    for name in ("fcn-curves.png", "fcn-class-iou.png"):
        assert is_png(tmp_path / "out" / "figures" / name)
        assert f"](figures/{name})" in text
    assert "Predicted masks: not drawn: no main-stage trial has stored weights yet" in text


def test_search_study_gets_the_lr_figure(tmp_path):
    trials = [fake_trial(f"v{i}", 0, [0.3 + 0.1 * i], lr=lr, arch=arch, pretrain=pretrain)
              for i, (lr, arch, pretrain) in enumerate([(1e-4, "fcn_resnet50", "imagenet"),
                                                        (1e-3, "segformer_b0", "none"),
                                                        (3e-3, "segformer_b0", "cityscapes")])]
    storage = write_fake_study(tmp_path, "search", trials, search={"num_samples": 3})
    path = report.write_report(load_results(storage, "search"), tmp_path / "out")
    assert is_png(tmp_path / "out" / "figures" / "search-lr.png")
    text = path.read_text()
    assert "](figures/search-lr.png)" in text
    # each sample has its own lr, so the default table has a row per trial (best first), not means over them
    rows = [line.split(" | ")[0].lstrip("| ") for line in text.splitlines() if line.startswith("| arch=")]
    assert rows == ["arch=segformer_b0/pretrain=cityscapes, lr 0.003", "arch=segformer_b0/pretrain=none, lr 0.001",
                    "arch=fcn_resnet50/pretrain=imagenet, lr 0.0001"]


def test_a_failing_figure_is_noted_and_the_rest_is_kept(tmp_path, monkeypatch, capsys):
    def broken(*args):
        raise ValueError("no ink")

    monkeypatch.setattr(figures, "learning_curves", broken)
    storage, _ = fcn_study(tmp_path)
    text = report.write_report(load_results(storage, "fcn"), tmp_path / "out").read_text()
    assert "## Notes" in text and "ValueError: no ink" in text
    assert is_png(tmp_path / "out" / "figures" / "fcn-class-iou.png")
    assert "no ink" in capsys.readouterr().err


def test_predicted_masks_of_the_best_checkpoint(tmp_path, pets_root):
    from trainables.config import TrainConfig
    from trainables.models import build_model

    weights = build_model(TrainConfig(arch="segformer_b0", dataset="pets")).state_dict()
    trials = [fake_trial("good", 0, [0.8], arch="segformer_b0", weights=weights),
              fake_trial("worse", 0, [0.5], arch="segformer_b0")]
    for trial in trials:
        trial["settings"].update(data_root=str(pets_root), cache_dir=str(tmp_path / "cache"), image_size=[32, 32])
    storage = write_fake_study(tmp_path, "masks", trials)
    text = report.write_report(load_results(storage, "masks"), tmp_path / "out").read_text()
    assert is_png(tmp_path / "out" / "figures" / "predicted-masks.png")
    assert "trial `good-s0`" in text and "](figures/predicted-masks.png)" in text


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
