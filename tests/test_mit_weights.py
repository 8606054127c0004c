"""MiT (SegFormer encoder) weights in every dialect, made from one random model, checked against the reference
implementations (segmentation-models-pytorch's NVlabs code, Hugging Face transformers) and read back by
`pretrain: PATH` and `pretrain: imagenet` (the Hugging Face hub cache) to identical encoder outputs."""

import pytest
import torch
from safetensors.torch import save_file

from trainables.checkpoint import save_encoder
from trainables.config import TrainConfig
from trainables.errors import ConfigError, WeightsError
from trainables.models import build_model, family_of
from trainables.models.mit_weights import HUGGINGFACE, NVLABS, OURS, to_dialect
from trainables.models.segformer import Segformer, SegformerConfig

PIXELS = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def encoder_outputs(model):
    with torch.no_grad():
        return model.encoder.eval()(PIXELS)


def hf_config(config, num_labels=7):
    from transformers import SegformerConfig as HFConfig

    return HFConfig(hidden_sizes=list(config.hidden_sizes), depths=list(config.depths),
                    num_attention_heads=list(config.num_attention_heads), sr_ratios=list(config.sr_ratios),
                    decoder_hidden_size=config.decoder_hidden_size, num_labels=num_labels)


@pytest.fixture(scope="module")
def source():
    """One random SegFormer-B0 (19 classes, as a Cityscapes pretraining would make)."""
    torch.manual_seed(11)
    return Segformer(SegformerConfig.mit("b0"), 19)


@pytest.fixture(scope="module")
def files(source, tmp_path_factory):
    """The source's encoder in every dialect and form, as the tools that make them write them."""
    root = tmp_path_factory.mktemp("mit")
    state = {key: value.clone() for key, value in source.encoder.state_dict().items()}
    nvlabs, hf = to_dialect(state, NVLABS), to_dialect(state, HUGGINGFACE)
    head = {"head.weight": torch.randn(1000, 256), "head.bias": torch.zeros(1000)}  # NVlabs' ImageNet classifier
    classifier = {"classifier.weight": torch.randn(1000, 256), "classifier.bias": torch.zeros(1000)}
    out = {}
    save_encoder(root / "encoder.safetensors", state, TrainConfig(arch="segformer_b0", dataset="cityscapes"))
    out["ours: encoder file"] = root / "encoder.safetensors"
    out["ours: whole model"] = root / "final.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, out["ours: whole model"])
    out["NVlabs: mit_b0.pth"] = root / "mit_b0.pth"
    torch.save({**nvlabs, **head}, out["NVlabs: mit_b0.pth"])
    (root / "smp").mkdir()
    out["smp: folder"] = root / "smp"
    save_file({k: v.contiguous() for k, v in nvlabs.items()}, root / "smp" / "model.safetensors")
    out["mmseg: checkpoint"] = root / "segformer_mmseg.pth"
    torch.save({"meta": {"epoch": 160}, "state_dict": {f"backbone.{k}": v for k, v in nvlabs.items()}},
               out["mmseg: checkpoint"])
    for name, ext in (("bin", "pytorch_model.bin"), ("safetensors", "model.safetensors")):
        folder = root / f"hf-{name}"
        folder.mkdir()
        full = {**{f"segformer.{k}": v.contiguous() for k, v in hf.items()}, **classifier}
        if name == "bin":
            torch.save(full, folder / ext)
        else:
            save_file(full, folder / ext, metadata={"format": "pt"})
        (folder / "config.json").write_text(hf_config(source.config, 1000).to_json_string())
        out[f"HF: {ext}"] = folder / ext
    out["HF: no prefix"] = root / "hf-plain.safetensors"
    save_file({k: v.contiguous() for k, v in hf.items()}, out["HF: no prefix"])
    return out


DIALECT_OF = {"ours": OURS, "NVlabs": NVLABS, "smp": NVLABS, "mmseg": NVLABS, "HF": HUGGINGFACE}
FORMS = ["ours: encoder file", "ours: whole model", "NVlabs: mit_b0.pth", "smp: folder", "mmseg: checkpoint",
         "HF: pytorch_model.bin", "HF: model.safetensors", "HF: no prefix"]


@pytest.mark.parametrize("form", FORMS)
def test_every_dialect_loads_to_identical_encoder_outputs(form, files, source):
    model = build_model(TrainConfig(arch="segformer_b0", pretrain=str(files[form])))
    expected = encoder_outputs(source)
    assert all(torch.equal(a, b) for a, b in zip(encoder_outputs(model), expected, strict=True))
    assert model.weights_read == (f"read MiT-B0 encoder weights in the {DIALECT_OF[form.split(':')[0]]} dialect "
                                  f"from {files[form]}")


def test_the_nvlabs_file_is_what_nvlabs_code_reads(files, source):
    """smp's copy of NVlabs' MixVisionTransformer loads the file strictly and computes our encoder's features."""
    from segmentation_models_pytorch.encoders.mix_transformer import mix_transformer_encoders

    spec = mix_transformer_encoders["mit_b0"]
    reference = spec["encoder"](**spec["params"]).eval()
    reference.load_state_dict(torch.load(files["NVlabs: mit_b0.pth"], weights_only=True))  # drops `head`
    with torch.no_grad():
        features = reference(PIXELS)[2:]  # after the input and smp's empty stride-2 placeholder
    assert all((a - b).abs().max() < 1e-5 for a, b in zip(features, encoder_outputs(source), strict=True))


@pytest.mark.parametrize("form", ["HF: pytorch_model.bin", "HF: model.safetensors"])
def test_the_hugging_face_files_are_what_transformers_reads(form, files, source):
    from transformers import SegformerForImageClassification

    reference, info = SegformerForImageClassification.from_pretrained(files[form].parent, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    with torch.no_grad():
        hidden = reference.eval().segformer(PIXELS, output_hidden_states=True).hidden_states
    # transformers' block norms use eps 1e-5 where NVlabs' (and ours) use 1e-6: equal to a few 1e-5
    assert all((a - b).abs().max() < 1e-4 for a, b in zip(hidden, encoder_outputs(source), strict=True))


def one_line_error(config):
    with pytest.raises(WeightsError) as caught:
        build_model(config)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_file_that_does_not_fit_names_the_first_difference(files, tmp_path):
    torch.manual_seed(0)
    b1 = Segformer(SegformerConfig.mit("b1"), 19).encoder.state_dict()
    torch.save(to_dialect(b1, NVLABS), tmp_path / "mit_b1.pth")
    message = one_line_error(TrainConfig(arch="segformer_b0", pretrain=str(tmp_path / "mit_b1.pth")))
    assert "mit_b1.pth (NVlabs/smp dialect) do not fit the segformer_b0 encoder (MiT-B0" in message
    assert "shape mismatch: patch_embed1.proj.weight is (64, 3, 7, 7) in the file, the encoder needs (32, 3, 7, 7)" \
        in message

    hf = to_dialect(build_model(TrainConfig(arch="segformer_b0")).encoder.state_dict(), HUGGINGFACE)
    hf = {f"segformer.{key}": value.contiguous() for key, value in hf.items()}
    missing = {k: v for k, v in hf.items() if k != "segformer.encoder.block.1.0.mlp.dense2.bias"}
    save_file(missing, tmp_path / "missing.safetensors")
    assert "missing key segformer.encoder.block.1.0.mlp.dense2.bias (the encoder's stages.1.0.ffn.fc2.bias)" in \
        one_line_error(TrainConfig(arch="segformer_b0", pretrain=str(tmp_path / "missing.safetensors")))
    save_file({**hf, "segformer.encoder.block.3.2.mlp.dense1.bias": torch.zeros(4)}, tmp_path / "extra.safetensors")
    assert "unexpected key segformer.encoder.block.3.2.mlp.dense1.bias" in \
        one_line_error(TrainConfig(arch="segformer_b0", pretrain=str(tmp_path / "extra.safetensors")))

    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "resnet.pth")
    assert "holds no MiT encoder weights in a known dialect" in one_line_error(
        TrainConfig(arch="segformer_b0", pretrain=str(tmp_path / "resnet.pth")))
    save_file({}, tmp_path / "empty.safetensors")
    assert "its first key is none: it is empty" in one_line_error(
        TrainConfig(arch="segformer_b0", pretrain=str(tmp_path / "empty.safetensors")))
    # the small_input stem's 5x5 first patch embedding cannot take the paper stem's 7x7 kernels
    message = one_line_error(TrainConfig(arch="segformer_b0", segformer_stem="small_input",
                                         pretrain=str(files["smp: folder"])))
    assert "patch_embed1.proj.weight is (32, 3, 7, 7)" in message and "use segformer_stem paper" in message


def test_imagenet_weights_come_from_the_hugging_face_hub_cache(files, source, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cache = tmp_path / "hf" / "hub"
    config = TrainConfig(arch="segformer_b0", pretrain="imagenet")
    family = family_of("segformer_b0")
    with pytest.raises(WeightsError, match=(rf"{cache}/models--nvidia--mit-b0/snapshots/<revision>/model.safetensors "
                                            rf"or pytorch_model.bin; {cache}/models--smp-hub--mit_b0.imagenet/.*"
                                            rf"pretrain: /path/to/mit-b0")):
        family.locate(config.to_dict())
    smp = cache / "models--smp-hub--mit_b0.imagenet" / "snapshots" / "9ce53d1"
    smp.mkdir(parents=True)
    (smp / "model.safetensors").write_bytes((files["smp: folder"] / "model.safetensors").read_bytes())
    assert family.locate(config.to_dict()) == str(smp / "model.safetensors")
    model = build_model(config)
    assert all(torch.equal(a, b) for a, b in zip(encoder_outputs(model), encoder_outputs(source), strict=True))
    assert model.weights_read.startswith("read MiT-B0 ImageNet encoder weights in the NVlabs/smp dialect from")

    # nvidia/mit-b0 comes first, and in it the snapshot refs/main names
    nvidia = cache / "models--nvidia--mit-b0"
    for revision in ("aaa", "bbb"):
        (nvidia / "snapshots" / revision).mkdir(parents=True)
        (nvidia / "snapshots" / revision / "pytorch_model.bin").write_bytes(files["HF: pytorch_model.bin"].read_bytes())
    (nvidia / "refs").mkdir()
    (nvidia / "refs" / "main").write_text("bbb")
    located = family.locate(config.to_dict())
    assert located == str(nvidia / "snapshots" / "bbb" / "pytorch_model.bin")
    assert "in the Hugging Face dialect" in build_model(config).weights_read
    # a trial reads the copy it is handed
    model = build_model(config, weights=str(files["NVlabs: mit_b0.pth"]))
    assert model.weights_read.endswith(f"NVlabs/smp dialect from {files['NVlabs: mit_b0.pth']}")


def test_imagenet_needs_the_paper_stem():
    with pytest.raises(ConfigError, match=r"segformer_stem: the small_input stem's first patch embedding \(5x5\)"):
        TrainConfig(arch="segformer_b3", pretrain="imagenet", segformer_stem="small_input")


def test_the_dialects_keep_every_tensor():
    """Converting there and back is the identity, for the deepest variant too (B5's 40 blocks in stage 3)."""
    from trainables.models.mit_weights import from_dialect

    with torch.device("meta"):
        b5 = Segformer(SegformerConfig.mit("b5"), 19)
    shapes = {key: value.shape for key, value in b5.encoder.state_dict().items()}
    for dialect in (NVLABS, HUGGINGFACE):
        state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
        back = from_dialect(to_dialect(state, dialect), dialect, "", b5, "x")
        assert {key: value.shape for key, value in back.items()} == shapes
