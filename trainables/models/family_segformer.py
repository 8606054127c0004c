"""The SegFormer family: segformer_b0 ... segformer_b5, the project's own model (segformer.py).

Sizes are NVlabs' and Hugging Face's (MiT-B0 ... B5; decoder 256 for B0/B1, 768 for B2-B5). ImageNet
encoders are read from local files only: `pretrain: imagenet` takes MiT-bX from the Hugging Face hub
cache (nvidia/mit-bX, else smp-hub/mit_bX.imagenet); `pretrain: PATH` any MiT file or folder in
either dialect (mit_weights.py reads NVlabs/smp, Hugging Face and our own keys).
"""

from __future__ import annotations

from trainables.errors import WeightsError
from trainables.models import ModelFamily
from trainables.models.caches import hf_hub_cache, hf_repo_folder, hf_snapshot_file

VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5")
# Where `pretrain: imagenet` looks, in this order: Hugging Face repositories and their files (in a cached snapshot).
IMAGENET_REPOS = (("nvidia/mit-{variant}", ("model.safetensors", "pytorch_model.bin")),
                  ("smp-hub/mit_{variant}.imagenet", ("model.safetensors",)))


def _rules(arch: str, settings: dict) -> str | None:
    if settings.get("pretrain") == "imagenet" and settings.get("segformer_stem", "paper") != "paper":
        return (f"segformer_stem: the {settings['segformer_stem']} stem's first patch embedding (5x5) cannot take the "
                f"7x7 kernels of ImageNet's MiT weights; pretrain imagenet needs segformer_stem paper")
    return None


def _label(settings: dict) -> str:
    return f"{settings['arch']} ({settings.get('segformer_stem', 'paper')} stem)"


def _locate(settings: dict) -> str:
    """The local MiT-bX ImageNet weights file in the Hugging Face hub cache; a WeightsError naming where it looked."""
    variant = settings["arch"].removeprefix("segformer_")
    for repo, files in IMAGENET_REPOS:
        found = hf_snapshot_file(repo.format(variant=variant), files)
        if found:
            return found
    places = "; ".join(f"{hf_repo_folder(repo.format(variant=variant))}/snapshots/<revision>/{' or '.join(files)}"
                       for repo, files in IMAGENET_REPOS)
    raise WeightsError(
        f"pretrain 'imagenet': no local MiT-{variant.upper()} ImageNet weights in the Hugging Face hub cache "
        f"{hf_hub_cache()}; expected {places}. Nothing can be downloaded here: fetch nvidia/mit-{variant} into that "
        f"cache where a network is reachable (HF_HUB_CACHE or HF_HOME move it), or set pretrain to a MiT-"
        f"{variant.upper()} weights file or folder in either dialect (`pretrain: /path/to/mit-{variant}` in a study "
        f"file, `--pretrain /path/to/mit-{variant}` for study train).")


FAMILY = ModelFamily(
    name="segformer",
    archs=tuple(f"segformer_{variant}" for variant in VARIANTS),
    module=__name__,
    options=("segformer_stem", "drop_path"),
    encoder_options=("segformer_stem",),
    weights=("imagenet",),
    rules=_rules,
    label=_label,
    locate=_locate,
)


def build(config, weights: str | None = None):
    """The SegFormer of `config`: random weights, or its encoder from pretrain (imagenet: `weights`, else the file
    FAMILY.locate finds; a file or folder: that)."""
    from trainables.models.mit_weights import encoder_state_from_file
    from trainables.models.segformer import Segformer, SegformerConfig
    from trainables.models.transfer import load_encoder_state

    variant = config.arch.removeprefix("segformer_")
    model = Segformer(SegformerConfig.mit(variant, stem=config.segformer_stem, drop_path_rate=config.drop_path),
                      config.classes)
    if config.pretrain == "none":
        return model
    imagenet = config.pretrain == "imagenet"
    path = (weights or _locate(config.to_dict())) if imagenet else config.pretrain
    state, dialect = encoder_state_from_file(path, model)
    load_encoder_state(model, state, path)
    model.weights_read = (f"read MiT-{variant.upper()} {'ImageNet ' if imagenet else ''}encoder weights in the "
                          f"{dialect} dialect from {path}")
    return model
