"""MiT (SegFormer encoder) weights from local files, in any of the three key dialects they come in.

    segstudy      our own keys (segformer.py): an encoder file a study exported, a state dict of the
                  encoder, or a whole model's (a trial's final.safetensors: keys encoder.*)
    NVlabs/smp    NVlabs' mix_transformer.py, which segmentation-models-pytorch keeps: patch_embed1.proj,
                  block1.0.attn.q, block1.0.attn.kv (key and value in one Linear), norm1, ...; NVlabs'
                  ImageNet checkpoints (mit_b0.pth, with the classifier `head`), smp-hub/mit_bX.imagenet's
                  model.safetensors, mmseg checkpoints (under state_dict, prefix backbone.), smp models
                  (prefix encoder.)
    Hugging Face  transformers' checkpoint names: segformer.encoder.patch_embeddings.0.proj,
                  segformer.encoder.block.0.0.attention.self.query, ...; nvidia/mit-bX (pytorch_model.bin
                  or model.safetensors), with or without the `segformer.` prefix

The dialect, and the prefix the file puts before the encoder's keys, are recognised by the key of the
first stage's first query projection, which every MiT has. Files are read by transfer.load_encoder_file
(safetensors, or torch.load with weights_only=True; a folder: its model.safetensors or pytorch_model.bin).
A file that does not fit is one WeightsError naming the first key or shape that differs.
"""

from __future__ import annotations

import re

import torch

from trainables.errors import WeightsError
from trainables.models.transfer import EncoderDecoder, load_encoder_file

OURS, NVLABS, HUGGINGFACE = "segstudy", "NVlabs/smp", "Hugging Face"
DIALECTS = (OURS, NVLABS, HUGGINGFACE)
# The first stage's first query projection in each dialect: what recognises the dialect and the file's prefix.
MARKERS = {OURS: "stages.0.0.attention.query.weight", NVLABS: "block1.0.attn.q.weight",
           HUGGINGFACE: "encoder.block.0.0.attention.self.query.weight"}
# Keys under a dialect's prefix that are not the encoder's: NVlabs' ImageNet classifier.
IGNORED = {NVLABS: ("head.",)}
# A transformer layer's modules: ours -> (NVlabs/smp, Hugging Face). NVlabs keeps key and value in one Linear,
# `kv`, key first (Attention.forward reshapes its output to [..., 2, heads, head_dim]).
LAYER_NAMES = {
    "norm1": ("norm1", "layer_norm_1"),
    "norm2": ("norm2", "layer_norm_2"),
    "attention.query": ("attn.q", "attention.self.query"),
    "attention.key": ("attn.kv", "attention.self.key"),
    "attention.value": ("attn.kv", "attention.self.value"),
    "attention.output": ("attn.proj", "attention.output.dense"),
    "attention.spatial_reduction": ("attn.sr", "attention.self.sr"),
    "attention.reduction_norm": ("attn.norm", "attention.self.layer_norm"),
    "ffn.fc1": ("mlp.fc1", "mlp.dense1"),
    "ffn.depthwise_conv": ("mlp.dwconv.dwconv", "mlp.dwconv.dwconv"),
    "ffn.fc2": ("mlp.fc2", "mlp.dense2"),
}
KV_HALF = {"attention.key": 0, "attention.value": 1}
_EMBEDDING = re.compile(r"patch_embeddings\.(\d+)\.(proj|layer_norm)\.(\w+)")
_STAGE_NORM = re.compile(r"layer_norms\.(\d+)\.(\w+)")
_LAYER = re.compile(r"stages\.(\d+)\.(\d+)\.(.+)\.(\w+)")


def dialect_key(key: str, dialect: str) -> tuple[str, int | None]:
    """Our encoder's `key` in `dialect`, and which half of that tensor it is (NVlabs' kv) or None."""
    if dialect == OURS:
        return key, None
    nvlabs = dialect == NVLABS
    if match := _EMBEDDING.fullmatch(key):
        stage, module, param = int(match[1]), match[2], match[3]
        if nvlabs:
            return f"patch_embed{stage + 1}.{'norm' if module == 'layer_norm' else 'proj'}.{param}", None
        return f"encoder.patch_embeddings.{stage}.{module}.{param}", None
    if match := _STAGE_NORM.fullmatch(key):
        stage, param = int(match[1]), match[2]
        return (f"norm{stage + 1}.{param}" if nvlabs else f"encoder.layer_norm.{stage}.{param}"), None
    if match := _LAYER.fullmatch(key):
        stage, index, module, param = int(match[1]), int(match[2]), match[3], match[4]
        name = LAYER_NAMES[module][0 if nvlabs else 1]
        if nvlabs:
            return f"block{stage + 1}.{index}.{name}.{param}", KV_HALF.get(module)
        return f"encoder.block.{stage}.{index}.{name}.{param}", None
    raise KeyError(f"not a MiT encoder key: {key}")


def detect(state: dict) -> tuple[str, str] | None:
    """(dialect, prefix of the encoder's keys) of a state dict; None when it holds no MiT encoder."""
    for key in state:
        for dialect, marker in MARKERS.items():
            prefix = key[:-len(marker)]
            if key.endswith(marker) and (not prefix or prefix.endswith(".")):
                return dialect, prefix
    return None


def encoder_state_from_file(path: str, model: EncoderDecoder) -> tuple[dict[str, torch.Tensor], str]:
    """(our encoder's state dict, the dialect it was found in) from a MiT weights file or folder."""
    state = load_encoder_file(path)
    found = detect(state)
    if found is None:
        markers = ", ".join(f"{marker} ({dialect})" for dialect, marker in MARKERS.items())
        raise WeightsError(f"pretrain: {path} holds no MiT encoder weights in a known dialect: expected a key such "
                           f"as {markers}; its first key is {next(iter(state), 'none: it is empty')}")
    dialect, prefix = found
    return from_dialect(state, dialect, prefix, model, f"{path} ({dialect} dialect)"), dialect


def from_dialect(state: dict, dialect: str, prefix: str, model: EncoderDecoder, source: str) -> dict:
    """The encoder's state dict (our keys) from `state` in `dialect`; a WeightsError naming the first key or shape
    that differs from `model`'s encoder."""
    expected = model.encoder.state_dict()
    converted, used = {}, set()
    for key, value in expected.items():
        name, half = dialect_key(key, dialect)
        name = prefix + name
        if name not in state:
            raise WeightsError(_misfit(source, model, f"missing key {name} (the encoder's {key})"))
        tensor = state[name]
        shape = tuple(value.shape)
        wanted = shape if half is None else (2 * shape[0], *shape[1:])
        if tuple(tensor.shape) != wanted:
            raise WeightsError(_misfit(source, model, f"shape mismatch: {name} is {tuple(tensor.shape)} in the file, "
                                                      f"the encoder needs {wanted}", _stem_hint(model, key)))
        converted[key] = tensor if half is None else tensor.chunk(2)[half].contiguous()
        used.add(name)
    ignored = tuple(prefix + start for start in IGNORED.get(dialect, ()))
    extra = [key for key in state if key.startswith(prefix) and key not in used and not key.startswith(ignored)]
    if extra:
        raise WeightsError(_misfit(source, model, f"unexpected key {extra[0]}"
                                                  f"{f' (and {len(extra) - 1} more keys)' if len(extra) > 1 else ''}"))
    return converted


def to_dialect(encoder_state: dict[str, torch.Tensor], dialect: str) -> dict[str, torch.Tensor]:
    """Our encoder's state dict in `dialect` (without any prefix): NVlabs' kv is key and value concatenated."""
    out: dict[str, torch.Tensor] = {}
    halves: dict[str, list] = {}
    for key, value in encoder_state.items():
        name, half = dialect_key(key, dialect)
        if half is None:
            out[name] = value
        else:
            halves.setdefault(name, [None, None])[half] = value
    out.update({name: torch.cat(pair) for name, pair in halves.items()})
    return out


def _misfit(source: str, model: EncoderDecoder, what: str, hint: str = "") -> str:
    config = model.config
    size = (f"MiT-{config.name.upper()}: hidden sizes {list(config.hidden_sizes)}, depths {list(config.depths)}, "
            f"{config.stem} stem")
    return f"pretrain: the weights in {source} do not fit the {model.arch} encoder ({size}): {what}{hint}"


def _stem_hint(model: EncoderDecoder, key: str) -> str:
    if key != "patch_embeddings.0.proj.weight":
        return ""
    if model.segformer_stem == "small_input":
        return ("; the small_input stem's first patch embedding is 5x5 and cannot take the 7x7 kernels of the paper "
                "stem (ImageNet's): use segformer_stem paper with these weights")
    return "; weights made for another segformer_stem?"
