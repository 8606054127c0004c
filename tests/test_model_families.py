"""Model families against their reference implementations: torchvision's builders, its weight files and caches,
Hugging Face's SegFormer and the hub caches' locations. MiT weight dialects: test_mit_weights.py; a user's
factory: test_model_factory.py."""

import inspect
import os
import subprocess
import sys

import pytest
import torch
import torchvision
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights, ResNet101_Weights, segmentation

from trainables.config import IMAGENET_WEIGHTS, TrainConfig
from trainables.errors import WeightsError
from trainables.models import build_model, caches, count_parameters, family_of, family_torchvision
from trainables.models.segformer import MIT_VARIANTS, Segformer, SegformerConfig
from trainables.models.torchvision_wrapper import class_layer_prefixes, from_torchvision_keys

ARCHS = tuple(family_torchvision.ARCHS)
BACKBONE_WEIGHTS = {"resnet50": ResNet50_Weights, "resnet101": ResNet101_Weights,
                    "mobilenet_v3_large": MobileNet_V3_Large_Weights}
COCO_WEIGHTS = {
    "fcn_resnet50": segmentation.FCN_ResNet50_Weights, "fcn_resnet101": segmentation.FCN_ResNet101_Weights,
    "deeplabv3_resnet50": segmentation.DeepLabV3_ResNet50_Weights,
    "deeplabv3_resnet101": segmentation.DeepLabV3_ResNet101_Weights,
    "deeplabv3_mobilenet_v3_large": segmentation.DeepLabV3_MobileNet_V3_Large_Weights,
    "lraspp_mobilenet_v3_large": segmentation.LRASPP_MobileNet_V3_Large_Weights,
}
VOC = 21  # the classes of torchvision's COCO-VOC weights


def has_aux(arch):
    return family_torchvision.ARCHS[arch][1]


def builders(arch, aux):
    """(torchvision's model, ours) for 21 classes, each built from seed 0: the same builder makes the same weights."""
    torch.manual_seed(0)
    reference = getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=VOC,
                                            **({"aux_loss": aux} if has_aux(arch) else {}))
    torch.manual_seed(0)
    ours = build_model(TrainConfig(arch=arch, num_classes=VOC, aux_loss_weight=0.4 if aux else 0.0))
    return reference, ours


@pytest.fixture(scope="module")
def built():
    """arch -> (torchvision's model, ours), with the aux head where the builder has one; each built once."""
    made = {}

    def get(arch):
        if arch not in made:
            made[arch] = builders(arch, has_aux(arch))
        return made[arch]
    return get


def assert_same_state(reference, ours):
    expected = from_torchvision_keys(reference.state_dict())
    state = ours.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[key], value) for key, value in expected.items())


@pytest.mark.parametrize("arch", ARCHS)
def test_torchvision_arch_equals_torchvisions_builder(arch, built):
    reference, ours = built(arch)
    assert_same_state(reference, ours)
    # COCO-VOC weights' num_params: 21 classes, with the aux head where the builder has one
    assert count_parameters(ours) == COCO_WEIGHTS[arch].COCO_WITH_VOC_LABELS_V1.meta["num_params"]
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, logits = reference.eval()(pixels), ours.eval()(pixels)
    assert logits.shape == (1, VOC, 64, 64)
    assert (logits - expected["out"]).abs().max() <= 1e-6
    if has_aux(arch):  # in training the aux head's logits too, dropout drawn alike from the same seed
        batch = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        torch.manual_seed(3)
        expected = reference.train()(batch)
        torch.manual_seed(3)
        outputs = ours.train()(batch)
        assert set(outputs) == {"out", "aux"}
        assert all((outputs[key] - expected[key]).abs().max() <= 1e-6 for key in ("out", "aux"))


@pytest.mark.parametrize("arch", [arch for arch in ARCHS if has_aux(arch)])
def test_torchvision_arch_without_aux_head_equals_torchvisions(arch):
    reference, ours = builders(arch, aux=False)
    assert ours.aux is None and not any(key.startswith("aux.") for key in ours.state_dict())
    assert_same_state(reference, ours)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)
    expected = reference.train()(pixels)
    torch.manual_seed(3)
    logits = ours.train()(pixels)
    assert isinstance(logits, torch.Tensor) and (logits - expected["out"]).abs().max() <= 1e-6


def test_weight_file_names_are_torchvisions():
    for arch, (_, aux, coco_file) in family_torchvision.ARCHS.items():
        weights = COCO_WEIGHTS[arch].COCO_WITH_VOC_LABELS_V1
        assert coco_file == os.path.basename(weights.url) and len(weights.meta["categories"]) == VOC
        assert aux == ("aux_loss" in inspect.signature(getattr(segmentation, arch)).parameters)
    for backbone, files in family_torchvision.IMAGENET_FILES.items():
        for name in IMAGENET_WEIGHTS:
            expected = BACKBONE_WEIGHTS[backbone][name]
            assert files[family_torchvision.imagenet_weights_name({"imagenet_weights": name})] == \
                os.path.basename(expected.url)


@pytest.mark.parametrize("env", [
    {}, {"TORCH_HOME": "/data/torch"}, {"XDG_CACHE_HOME": "/data/xdg"}, {"TORCH_HOME": "~/th", "XDG_CACHE_HOME": "/x"},
    {"HOME": "/home/other"}, {"HOME": "/home/other", "XDG_CACHE_HOME": "~/cache"},
])
def test_torch_hub_dir_is_torch_hubs(env, monkeypatch):
    for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert torch.hub._hub_dir is None  # nothing called torch.hub.set_dir, which caches.torch_hub_dir cannot see
    assert caches.torch_hub_dir() == torch.hub.get_dir()


HF_ENVIRONMENTS = [
    {}, {"HF_HOME": "/data/hf"}, {"XDG_CACHE_HOME": "/data/xdg"}, {"HF_HOME": "~/hf", "XDG_CACHE_HOME": "/x"},
    {"HUGGINGFACE_HUB_CACHE": "/legacy/hub", "HF_HOME": "/data/hf"}, {"HF_HUB_CACHE": "/hub", "HF_HOME": "/data"},
    {"HF_HUB_CACHE": "$SOME_ROOT/hub", "SOME_ROOT": "/mnt"}, {"HOME": "/home/other"},
]


def test_hf_hub_cache_is_huggingface_hubs():
    # huggingface_hub computes its cache when imported: one fresh interpreter per environment
    script = ("import huggingface_hub.constants as c; from trainables.models.caches import hf_hub_cache; "
              "print(c.HF_HUB_CACHE); print(hf_hub_cache())")
    cleared = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
                                                                "XDG_CACHE_HOME")}
    for env in HF_ENVIRONMENTS:
        out = subprocess.run([sys.executable, "-c", script], env={**cleared, **env}, capture_output=True, text=True,
                             check=True).stdout.split("\n")
        assert out[0] == out[1], env


def save(state, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


@pytest.mark.parametrize("arch", ARCHS)
def test_coco_weights_from_torch_hub_cache_fill_all_but_the_class_layers(arch, built, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference, _ = built(arch)
    coco_state = reference.state_dict()  # the shapes of torchvision's COCO-VOC file (21 classes, aux head)
    coco_file = os.path.basename(COCO_WEIGHTS[arch].COCO_WITH_VOC_LABELS_V1.url)
    save(coco_state, tmp_path / "hub" / "checkpoints" / coco_file)
    config = TrainConfig(arch=arch, pretrain="coco", num_classes=3, aux_loss_weight=0.4 if has_aux(arch) else 0.0)
    model = build_model(config)
    expected = from_torchvision_keys(coco_state)
    classes = class_layer_prefixes(arch)
    state = model.state_dict()
    assert [key for key in state if key.startswith(classes)]  # the class layers: 3 outputs, their own start
    assert all(state[key].shape[0] == 3 for key in state if key.startswith(classes) and state[key].ndim)
    assert all(torch.equal(value, expected[key]) for key, value in state.items() if not key.startswith(classes))
    assert "COCO-VOC" in model.weights_read and "torchvision segmentation model" in model.weights_read
    if arch == "deeplabv3_mobilenet_v3_large":  # without its aux head the model takes the rest (one arch: time)
        plain = build_model(config.replace(aux_loss_weight=0.0))
        assert all(torch.equal(value, expected[key]) for key, value in plain.state_dict().items()
                   if not key.startswith(classes))


@pytest.mark.parametrize("arch", ARCHS)
def test_imagenet_backbone_from_torch_hub_cache(arch, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    backbone = family_torchvision.ARCHS[arch][0]
    config = TrainConfig(arch=arch, pretrain="imagenet", num_classes=3, imagenet_weights="IMAGENET1K_V1")
    with pytest.raises(WeightsError, match=os.path.basename(BACKBONE_WEIGHTS[backbone].IMAGENET1K_V1.url)):
        build_model(config)
    torch.manual_seed(1)
    classifier = getattr(torchvision.models, backbone)().state_dict()
    old_style = {k: v for k, v in classifier.items() if not k.endswith("num_batches_tracked")}  # pre-0.4.1 files
    save(old_style, tmp_path / "hub" / "checkpoints" / os.path.basename(BACKBONE_WEIGHTS[backbone].IMAGENET1K_V1.url))
    model = build_model(config)
    features = {k.removeprefix("features."): v for k, v in classifier.items()}
    encoder = model.encoder.state_dict()
    assert all(torch.equal(value, features[key]) for key, value in encoder.items())
    assert "ImageNet weights IMAGENET1K_V1 (torchvision classification model)" in model.weights_read


def test_weights_given_to_build_are_read_instead_of_the_cache(tmp_path, monkeypatch):
    # the runner hands a trial a content-addressed copy of the file FAMILY.locate found
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    torch.manual_seed(2)
    resnet = torchvision.models.resnet50().state_dict()
    copy = tmp_path / "artifacts" / "3f2a9c.pth"
    save(resnet, copy)
    config = TrainConfig(arch="fcn_resnet50", pretrain="imagenet")
    with pytest.raises(WeightsError, match="resnet50-11ad3fa6.pth"):
        family_of(config.arch).locate(config.to_dict())
    model = build_model(config, weights=str(copy))
    assert torch.equal(model.encoder.layer4[2].conv3.weight, resnet["layer4.2.conv3.weight"])
    assert str(copy) in model.weights_read


def test_located_files_and_wrong_kinds_of_file(built, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    family = family_of("lraspp_mobilenet_v3_large")
    coco = TrainConfig(arch="lraspp_mobilenet_v3_large", pretrain="coco").to_dict()
    with pytest.raises(WeightsError, match=r"lraspp_mobilenet_v3_large-d234d4ea\.pth.*pretrain: /path/to"):
        family.locate(coco)
    mobilenet = torchvision.models.mobilenet_v3_large().state_dict()
    save(mobilenet, checkpoints / "lraspp_mobilenet_v3_large-d234d4ea.pth")  # a classification file as COCO's
    assert family.locate(coco) == str(checkpoints / "lraspp_mobilenet_v3_large-d234d4ea.pth")
    with pytest.raises(WeightsError, match="holds a torchvision classification model's weights, not a segmentation"):
        build_model(TrainConfig(arch="lraspp_mobilenet_v3_large", pretrain="coco"))
    # pretrain: PATH takes a segmentation file too (all but the class layers), and says which it found
    reference, _ = built("lraspp_mobilenet_v3_large")
    save(reference.state_dict(), tmp_path / "lraspp.pth")
    model = build_model(TrainConfig(arch="lraspp_mobilenet_v3_large", pretrain=str(tmp_path / "lraspp.pth")))
    assert "(torchvision segmentation model)" in model.weights_read
    assert torch.equal(model.decoder.cbr[0].weight, reference.classifier.cbr[0].weight)
    # a file of another backbone names the first keys that differ
    save(torchvision.models.resnet50().state_dict(), tmp_path / "resnet50.pth")
    with pytest.raises(WeightsError, match=r"resnet50\.pth.*do not fit.*missing \d+ key\(s\): 0\.0\.weight"):
        build_model(TrainConfig(arch="lraspp_mobilenet_v3_large", pretrain=str(tmp_path / "resnet50.pth")))


@pytest.mark.parametrize("variant", sorted(MIT_VARIANTS))
def test_segformer_sizes_are_nvlabs_and_hugging_faces(variant):
    from segmentation_models_pytorch.encoders.mix_transformer import mix_transformer_encoders
    from transformers import SegformerConfig as HFConfig
    from transformers import SegformerForSemanticSegmentation

    config = SegformerConfig.mit(variant)
    nvlabs = mix_transformer_encoders[f"mit_{variant}"]["params"]  # NVlabs' sizes, as smp keeps them
    assert (list(config.hidden_sizes), list(config.depths), list(config.num_attention_heads),
            list(config.sr_ratios), config.mlp_ratio) == (nvlabs["embed_dims"], nvlabs["depths"],
                                                          nvlabs["num_heads"], nvlabs["sr_ratios"],
                                                          nvlabs["mlp_ratios"][0])
    assert config.decoder_hidden_size == (256 if variant in ("b0", "b1") else 768)
    hf_config = HFConfig(hidden_sizes=list(config.hidden_sizes), depths=list(config.depths),
                         num_attention_heads=list(config.num_attention_heads), sr_ratios=list(config.sr_ratios),
                         decoder_hidden_size=config.decoder_hidden_size, num_labels=150)
    with torch.device("meta"):  # sizes only: no memory, no initialisation
        ours = Segformer(config, 150)
        reference = SegformerForSemanticSegmentation(hf_config)
    assert count_parameters(ours) == count_parameters(reference)
