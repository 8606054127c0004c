"""Models on CPU at tiny sizes: shapes, parameter count, encoder transfer, freezing, offline ImageNet weights."""

import pytest
import torch
import torchvision

from trainables.checkpoint import weights_metadata
from trainables.config import TrainConfig
from trainables.errors import WeightsError
from trainables.models import build_model, count_parameters
from trainables.models.segformer import Segformer, SegformerConfig
from trainables.models.transfer import (
    export_encoder_state,
    freeze_encoder,
    load_encoder_file,
    load_encoder_state,
    save_encoder,
    trainable_parameters,
)

SIZES = [(64, 64), (48, 80)]


def segformer(dataset="pets", stem="paper"):
    """SegFormer-B0 with 3 classes (pets) or 19 (cityscapes)."""
    torch.manual_seed(0)
    return build_model(TrainConfig(arch="segformer_b0", dataset=dataset, segformer_stem=stem))


@pytest.fixture(scope="module")
def fcn():
    return build_model(TrainConfig(arch="fcn_resnet50"))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("stem", ["paper", "small_input"])
def test_segformer_logits_have_the_input_size(stem, size):
    model = segformer(stem=stem).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 3, *size)


@pytest.mark.parametrize("stem, sides", [("paper", [16, 8, 4, 2]), ("small_input", [32, 16, 8, 4])])
def test_segformer_stage_sizes_at_64(stem, sides):
    features = segformer(stem=stem).encoder(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in features] == [(s, s) for s in sides]
    assert [f.shape[1] for f in features] == [32, 64, 160, 256]


def test_segformer_smallest_input_and_training_mode():
    # 16x16 makes the paper stem's stages 4, 2, 1, 1 pixels: smaller than their spatial reduction kernels
    model = segformer().train()
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("size", SIZES)
def test_fcn_logits_have_the_input_size(fcn, size):
    with torch.no_grad():
        assert fcn.eval()(torch.randn(1, 3, *size)).shape == (1, 3, *size)


def test_segformer_b0_has_the_published_size():
    assert 3.5e6 < count_parameters(segformer()) < 3.9e6  # SegFormer-B0: 3.7M


def test_mit_presets_follow_the_paper():
    b5 = SegformerConfig.mit("b5", stem="small_input")
    assert (b5.hidden_sizes, b5.depths, b5.decoder_hidden_size, b5.stem) == ((64, 128, 320, 512), (3, 6, 40, 3), 768,
                                                                              "small_input")
    assert SegformerConfig.mit("b1").decoder_hidden_size == 256
    assert 13.0e6 < count_parameters(Segformer(SegformerConfig.mit("b1"), 150)) < 14.0e6  # MiT-B1 SegFormer: 13.7M


def test_segformer_layer_norm_eps_as_in_the_official_code():
    # NVlabs mix_transformer.py: eps 1e-6 (mit_b*'s norm_layer) in the blocks and per-stage norms;
    # nn.LayerNorm's default 1e-5 in OverlapPatchEmbed and in Attention's spatial-reduction norm.
    eps = {name: module.eps for name, module in segformer().encoder.named_modules()
           if isinstance(module, torch.nn.LayerNorm)}
    default = {name for name in eps if name.startswith("patch_embeddings.") or name.endswith(".reduction_norm")}
    assert len(eps) == 30 and len(default) == 4 + 6  # B0: 4 embeddings, sr_ratio > 1 in 3 stages of 2 blocks
    assert {eps[name] for name in default} == {1e-5}
    assert {eps[name] for name in eps.keys() - default} == {1e-6}
    assert sum(name.startswith("layer_norms.") for name in eps.keys() - default) == 4


def test_encoder_transfer_copies_exactly_the_encoder(tmp_path):
    source, target = segformer(dataset="cityscapes"), segformer()
    decoder_before = {k: v.clone() for k, v in target.decoder.state_dict().items()}
    path = tmp_path / "encoder.safetensors"
    save_encoder(source, path, TrainConfig(arch="segformer_b0", dataset="cityscapes"))
    assert weights_metadata(path)["segformer_stem"] == "paper"
    load_encoder_state(target, load_encoder_file(path), str(path))
    expected = source.encoder.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in target.encoder.state_dict().items())
    assert all(torch.equal(value, decoder_before[key]) for key, value in target.decoder.state_dict().items())
    # through the config, as a trial does
    built = build_model(TrainConfig(arch="segformer_b0", pretrain=str(path)))
    assert torch.equal(built.encoder.patch_embeddings[0].proj.weight, source.encoder.patch_embeddings[0].proj.weight)


def test_encoder_of_another_stem_fails_loudly(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(export_encoder_state(segformer(stem="small_input")), path)  # a bare state dict
    with pytest.raises(WeightsError, match=r"small\.pt.*shape mismatch.*patch_embeddings\.0\.proj\.weight"):
        build_model(TrainConfig(arch="segformer_b0", pretrain=str(path), segformer_stem="paper"))


def test_missing_weights_file_is_named():
    with pytest.raises(WeightsError, match="no/such/encoder.pt"):
        build_model(TrainConfig(arch="segformer_b0", pretrain="no/such/encoder.pt"))


def train_a_few_steps(model, size, batch):
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    model.train()
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(batch, 3, *size)),
                                                 torch.randint(0, 3, (batch, *size)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("arch, size, batch", [("segformer_b0", (64, 64), 4), ("fcn_resnet50", (32, 32), 2)])
def test_frozen_encoder_stays_bit_identical(arch, size, batch):
    torch.manual_seed(0)
    model = build_model(TrainConfig(arch=arch))
    freeze_encoder(model)
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    assert encoder_ids.isdisjoint(id(p) for p in trainable_parameters(model))
    assert len(trainable_parameters(model)) == len(list(model.decoder.parameters()))
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}  # weights and BatchNorm buffers
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    train_a_few_steps(model, size, batch)
    assert not model.encoder.training and model.decoder.training
    assert all(torch.equal(value, encoder_before[key]) for key, value in model.encoder.state_dict().items())
    assert not all(torch.equal(value, decoder_before[key]) for key, value in model.decoder.state_dict().items())


def test_imagenet_weights_come_only_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    config = TrainConfig(arch="fcn_resnet50", pretrain="imagenet")
    with pytest.raises(WeightsError, match=r"resnet50-11ad3fa6\.pth.*pretrain to the path"):
        build_model(config)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    imagenet = torchvision.models.resnet50().state_dict()
    torch.save(imagenet, checkpoints / "resnet50-11ad3fa6.pth")
    model = build_model(config)
    assert torch.equal(model.encoder.conv1.weight, imagenet["conv1.weight"])
    with pytest.raises(WeightsError, match=r"resnet50-0676ba61\.pth"):
        build_model(config.replace(imagenet_weights="IMAGENET1K_V1"))


def test_fcn_loads_a_local_resnet50_state_dict(tmp_path):
    resnet = torchvision.models.resnet50().state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save(resnet, path)
    model = build_model(TrainConfig(arch="fcn_resnet50", pretrain=str(path), freeze="encoder"))
    assert all(torch.equal(value, resnet[key]) for key, value in model.encoder.state_dict().items())
    assert not any(p.requires_grad for p in model.encoder.parameters())

    del resnet["layer4.2.bn3.weight"]
    resnet["head.weight"] = torch.zeros(1)
    torch.save(resnet, path)
    with pytest.raises(WeightsError, match=r"resnet50\.pth.*missing 1 key\(s\): layer4\.2\.bn3\.weight.*head\.weight"):
        build_model(TrainConfig(arch="fcn_resnet50", pretrain=str(path)))
