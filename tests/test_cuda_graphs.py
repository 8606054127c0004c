"""The `cuda_graphs` train setting on a machine without CUDA: accepted everywhere, eager with one warning line.

Capture itself needs a GPU: `benchmarks/gpu/run` compares graphed steps against eager ones there.
"""

from pathlib import Path

import pytest

from study.errors import SpecError
from study.planning.plan import make_plan
from study.planning.spec import load_spec
from tests.test_engine import tiny_config
from trainables.engine import fit
from trainables.errors import ConfigError

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"


def test_on_cpu_cuda_graphs_warns_in_one_line_and_trains_exactly_as_eager(pets_root, tmp_path, capfd):
    config = tiny_config(pets_root, tmp_path, epochs=2, val_interval=1)
    eager = fit(config)
    capfd.readouterr()
    graphed = fit(config.replace(cuda_graphs=True))
    warnings = [line for line in capfd.readouterr().err.splitlines() if "cuda_graphs" in line]
    assert warnings == ["warning: cuda_graphs is on but the device is cpu, not CUDA: the train step runs eagerly"]
    keys = ("train_loss", "train_miou", "val_loss", "val_miou", "lr")
    assert [[r[k] for k in keys] for r in graphed.records] == [[r[k] for k in keys] for r in eager.records]


def test_cuda_graphs_is_a_train_setting_of_study_files_that_leaves_the_pretraining_key_alone():
    def fingerprint(dataset, root):
        return f"content-of-{dataset}"

    plain = make_plan(load_spec(SMOKE, environ={}), fingerprint)
    graphed = make_plan(load_spec(SMOKE, ["train.cuda_graphs=true", "pretraining.cityscapes.cuda_graphs=true"],
                                  environ={}), fingerprint)
    assert all(trial.config["cuda_graphs"] for trial in graphed.trials)
    assert not any(trial.config["cuda_graphs"] for trial in plain.trials)
    assert [job.key for job in graphed.pretrain_jobs] == [job.key for job in plain.pretrain_jobs]


def test_a_bad_cuda_graphs_value_or_one_with_compile_names_its_key():
    with pytest.raises(SpecError, match=r"train.cuda_graphs: expected true or false, got 'sometimes'"):
        load_spec(SMOKE, ["train.cuda_graphs=sometimes"], environ={})
    with pytest.raises(SpecError, match=r"train.cuda_graphs: not with compile"):
        load_spec(SMOKE, ["train.cuda_graphs=true", "train.compile=true"], environ={})
    with pytest.raises(ConfigError, match="cuda_graphs: not with compile"):
        tiny_config("data", Path("x"), cuda_graphs=True, compile=True)
