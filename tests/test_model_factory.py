"""A user's own model, `arch: module:function` (tests/factory_models.py): trains through the engine, exports its
encoder, loads it back frozen, predicts; what cannot work is one ConfigError line from family_factory.check,
which the study side runs on the driver before Ray starts."""

import pytest
import torch

from trainables.checkpoint import save_encoder
from trainables.config import TrainConfig
from trainables.engine import fit
from trainables.errors import ConfigError
from trainables.models import build_model, family_of
from trainables.models.family_factory import check

TINY = "tests.factory_models:tiny"


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    from trainables.data import synth_dataset

    root = tmp_path_factory.mktemp("pets-factory")
    synth_dataset("pets", root, train=8, val=4, seed=0)
    return root


def config_for(root, tmp_path, **changes):
    values = dict(arch=TINY, dataset="pets", data_root=str(root), cache_dir=str(tmp_path / "cache"),
                  image_size=(32, 32), epochs=1, batch_size=4, device="cpu", num_threads=1, seed=0)
    return TrainConfig(**{**values, **changes})


def test_a_factory_model_trains_exports_freezes_and_predicts(pets, tmp_path):
    config = config_for(pets, tmp_path, export_encoder="last", model_kwargs='{"width": 6}')
    check(config)
    assert family_of(TINY).name == "factory"
    kept = {}
    result = fit(config, on_epoch_end=lambda record, snapshot: kept.update(
        {k: v.detach().clone() for k, v in snapshot.weights().items()}))
    assert result.status == "finished" and result.records[-1]["validated"]
    assert kept["net.encoder.0.weight"].shape == (6, 3, 3, 3)  # model_kwargs reached the factory
    assert set(result.encoder_state) == {k.removeprefix("net.encoder.") for k in kept if k.startswith("net.encoder.")}
    path = tmp_path / "encoder.safetensors"
    save_encoder(path, result.encoder_state, config)

    frozen = config.replace(pretrain=str(path), freeze="encoder", export_encoder="none", seed=1)
    check(frozen)
    model = build_model(frozen)
    assert all(torch.equal(value, result.encoder_state[key]) for key, value in model.encoder.state_dict().items())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert model.weights_read == f"read the encoder of {TINY} from {path}"
    after = {}
    fit(frozen, on_epoch_end=lambda record, snapshot: after.update(
        {k: v.detach().clone() for k, v in snapshot.weights().items()}))
    for key, value in result.encoder_state.items():  # weights and BatchNorm statistics untouched
        assert torch.equal(after[f"net.encoder.{key}"], value), key
    assert not torch.equal(after["net.head.weight"], kept["net.head.weight"])

    model.load_state_dict(after)
    with torch.no_grad():
        logits = model.eval()(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 3, 32, 32) and logits.argmax(1).max() < 3


def one_line(error):
    message = str(error.value)
    assert "\n" not in message
    return message


def test_what_cannot_work_is_one_config_error(pets, tmp_path):
    with pytest.raises(ConfigError) as error:
        TrainConfig(arch="fcn_resnet5")
    assert "did you mean 'fcn_resnet50'" in one_line(error)
    with pytest.raises(ConfigError) as error:
        check(config_for(pets, tmp_path, arch="tests.no_such_module:build"))
    assert "cannot import the module 'tests.no_such_module'" in one_line(error)
    with pytest.raises(ConfigError) as error:
        check(config_for(pets, tmp_path, arch="tests.factory_models:no_such_function"))
    assert "has no function 'no_such_function'" in one_line(error)
    with pytest.raises(ConfigError) as error:
        check(config_for(pets, tmp_path, arch="tests.factory_models:one_class_too_many"))
    assert "gives (1, 4, 32, 32) for one image of 32x32; expected logits [1, 3, h, w]" in one_line(error)
    with pytest.raises(ConfigError) as error:
        check(config_for(pets, tmp_path, arch="tests.factory_models:not_a_module"))
    assert "returned str, not a torch nn.Module" in one_line(error)
    with pytest.raises(ConfigError) as error:
        check(config_for(pets, tmp_path, model_kwargs='{"depth": 3}'))
    assert "failed: TypeError" in one_line(error) and "depth" in one_line(error)
    plain = config_for(pets, tmp_path, arch="tests.factory_models:without_encoder")
    check(plain)  # a model without an encoder trains as it is
    for setting, changes in (("freeze", {"pretrain": str(tmp_path / "encoder.safetensors"), "freeze": "encoder"}),
                             ("pretrain", {"pretrain": str(tmp_path / "encoder.safetensors")}),
                             ("export_encoder", {"export_encoder": "last"}), ("head_lr_mult", {"head_lr_mult": 10.0})):
        with pytest.raises(ConfigError) as error:
            check(plain.replace(**changes))
        assert f"{setting}: the model of tests.factory_models:without_encoder has no `encoder`" in \
            one_line(error)
    # the trial side says the same when it gets there
    torch.save({"weight": torch.zeros(1)}, tmp_path / "weights.pt")
    with pytest.raises(ConfigError, match="pretrain: the model of tests.factory_models:without_encoder has no"):
        build_model(plain.replace(pretrain=str(tmp_path / "weights.pt"), freeze="encoder"))


@pytest.mark.parametrize("arch, kwargs, expected", [
    ("os:system", {"command": "touch {marker}"}, "names a module of Python's standard library"),
    ("subprocess:run", {"args": "touch {marker}", "shell": True}, "names a module of Python's standard library"),
    ("torch:save", {"obj": 1, "f": "{marker}"}, "is not a model factory"),
    ("tests.factory_models:TinyNet", {"width": 2}, "is not a model factory"),
])
def test_an_arch_from_a_study_folder_runs_nothing_but_a_model_factory(tmp_path, arch, kwargs, expected):
    """An arch and its model_kwargs are read back from study folders (report, predict): only a Python function
    outside the standard library with a num_classes parameter is ever called."""
    import json

    marker = tmp_path / "ran"
    settings = json.dumps({k: v.format(marker=marker) if isinstance(v, str) else v for k, v in kwargs.items()})
    with pytest.raises(ConfigError, match=expected):
        build_model(TrainConfig(arch=arch, num_classes=3, model_kwargs=settings))
    assert not marker.exists()
