"""SegFormer: a Mix Transformer (MiT) encoder and an all-MLP decoder, in one file.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers" (NeurIPS 2021). Written after Hugging Face's modeling_segformer.py, with
the initialisation of the authors' code. Two stems:
- "paper": patch embeddings 7x7/4 then 3x3/2 (strides 4, 8, 16, 32 of the input);
- "small_input": 5x5/2 then 3x3/2 (strides 2, 4, 8, 16), which keeps twice the
  resolution in every stage for small images such as 64x64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from trainables.models.transfer import EncoderDecoder

# stem -> (kernel size, stride) of the patch embedding of each stage
STEMS = {
    "paper": ((7, 4), (3, 2), (3, 2), (3, 2)),
    "small_input": ((5, 2), (3, 2), (3, 2), (3, 2)),
}


@dataclass(frozen=True)
class SegformerConfig:
    name: str = "b0"
    hidden_sizes: tuple[int, ...] = (32, 64, 160, 256)
    num_attention_heads: tuple[int, ...] = (1, 2, 5, 8)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratio: int = 4
    decoder_hidden_size: int = 256
    drop_path_rate: float = 0.0  # the seed's code (course skeleton): 0.0; NVlabs' mit_b0..b5: 0.1 (README)
    classifier_dropout: float = 0.1  # Dropout2d before the classifier
    # LayerNorm eps as in NVlabs/SegFormer mmseg/models/backbones/mix_transformer.py: mit_b0..b5 pass
    # norm_layer=partial(nn.LayerNorm, eps=1e-6) to the blocks (norm1, norm2) and the per-stage norms, while
    # OverlapPatchEmbed.norm and Attention.norm (after the spatial reduction) are a plain nn.LayerNorm(dim).
    layer_norm_eps: float = 1e-6
    embedding_norm_eps: float = 1e-5  # PyTorch's default: patch embeddings and the spatial-reduction norm
    stem: str = "paper"
    num_channels: int = 3

    def __post_init__(self) -> None:
        if self.stem not in STEMS:
            raise ValueError(f"stem: expected one of {list(STEMS)}, got {self.stem!r}")

    @property
    def patch_embeddings(self) -> tuple[tuple[int, int], ...]:
        return STEMS[self.stem]

    @classmethod
    def mit(cls, variant: str, **changes) -> SegformerConfig:
        """The paper's MiT-B0..B5 encoder with its decoder width, e.g. `mit("b0", stem="small_input")`."""
        if variant not in MIT_VARIANTS:
            raise ValueError(f"unknown MiT variant {variant!r}; known: {sorted(MIT_VARIANTS)}")
        return replace(MIT_VARIANTS[variant], **changes)


_WIDE = dict(hidden_sizes=(64, 128, 320, 512), decoder_hidden_size=768)
MIT_VARIANTS = {
    "b0": SegformerConfig(name="b0"),
    "b1": SegformerConfig(name="b1", hidden_sizes=(64, 128, 320, 512)),
    "b2": SegformerConfig(name="b2", depths=(3, 4, 6, 3), **_WIDE),
    "b3": SegformerConfig(name="b3", depths=(3, 4, 18, 3), **_WIDE),
    "b4": SegformerConfig(name="b4", depths=(3, 8, 27, 3), **_WIDE),
    "b5": SegformerConfig(name="b5", depths=(3, 6, 40, 3), **_WIDE),
}


class OverlapPatchEmbeddings(nn.Module):
    """A strided convolution whose kernel overlaps its neighbours, then LayerNorm over channels."""

    def __init__(self, kernel_size: int, stride: int, in_channels: int, hidden_size: int, eps: float):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size, stride, padding=kernel_size // 2)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        embeddings = self.proj(pixels)
        height, width = embeddings.shape[-2:]
        tokens = embeddings.flatten(2).transpose(1, 2)  # [B, H*W, C]
        return self.layer_norm(tokens), height, width


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys and values come from a map shrunk `sr_ratio` times per side."""

    def __init__(self, hidden_size: int, num_heads: int, sr_ratio: int, reduction_eps: float):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not a multiple of {num_heads} attention heads")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, hidden_size)
        if sr_ratio > 1:
            self.spatial_reduction = nn.Conv2d(hidden_size, hidden_size, kernel_size=sr_ratio, stride=sr_ratio)
            self.reduction_norm = nn.LayerNorm(hidden_size, eps=reduction_eps)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, length, channels = tokens.shape
        context = tokens
        if self.sr_ratio > 1:
            spatial = tokens.transpose(1, 2).reshape(batch, channels, height, width)
            # A map smaller than the reduction kernel (tiny inputs) is zero-padded up to one kernel.
            spatial = F.pad(spatial, (0, max(0, self.sr_ratio - width), 0, max(0, self.sr_ratio - height)))
            reduced = self.spatial_reduction(spatial).flatten(2).transpose(1, 2)
            context = self.reduction_norm(reduced)
        query = self._split_heads(self.query(tokens))
        key = self._split_heads(self.key(context))
        value = self._split_heads(self.value(context))
        attended = F.scaled_dot_product_attention(query, key, value)
        return self.output(attended.transpose(1, 2).reshape(batch, length, channels))

    def _split_heads(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, channels = tokens.shape
        return tokens.view(batch, length, self.num_heads, channels // self.num_heads).transpose(1, 2)


class MixFFN(nn.Module):
    """Feed-forward block whose 3x3 depthwise convolution gives the tokens their position."""

    def __init__(self, hidden_size: int, inner_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, inner_size)
        self.depthwise_conv = nn.Conv2d(inner_size, inner_size, 3, padding=1, groups=inner_size)
        self.activation = nn.GELU()
        self.fc2 = nn.Linear(inner_size, hidden_size)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        hidden = self.fc1(tokens)
        batch, length, channels = hidden.shape
        spatial = hidden.transpose(1, 2).reshape(batch, channels, height, width)
        hidden = self.depthwise_conv(spatial).flatten(2).transpose(1, 2)
        return self.fc2(self.activation(hidden))


class DropPath(nn.Module):
    """Stochastic depth: in training, drops the whole residual branch of a sample with probability `drop_prob`."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return branch
        keep_prob = 1.0 - self.drop_prob
        mask = branch.new_empty((branch.shape[0],) + (1,) * (branch.ndim - 1)).bernoulli_(keep_prob)
        return branch * mask / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class SegformerLayer(nn.Module):
    """One pre-norm transformer block: efficient attention, then Mix-FFN, each residual."""

    def __init__(self, hidden_size: int, num_heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float, eps: float,
                 reduction_eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=eps)
        self.attention = EfficientSelfAttention(hidden_size, num_heads, sr_ratio, reduction_eps)
        self.norm2 = nn.LayerNorm(hidden_size, eps=eps)
        self.ffn = MixFFN(hidden_size, hidden_size * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        tokens = tokens + self.drop_path(self.attention(self.norm1(tokens), height, width))
        return tokens + self.drop_path(self.ffn(self.norm2(tokens), height, width))


class MixTransformerEncoder(nn.Module):
    """Four stages of patch embedding, transformer layers and LayerNorm; returns one [B, C, H, W] map per stage."""

    def __init__(self, config: SegformerConfig):
        super().__init__()
        # the stochastic depth rate grows linearly over all layers of all stages (computed on the CPU whatever the
        # default device: a model built on the meta device still gets its rates)
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths), dtype=torch.float64, device="cpu").tolist()
        in_channels = [config.num_channels, *config.hidden_sizes[:-1]]
        self.patch_embeddings = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.layer_norms = nn.ModuleList()
        first = 0
        for stage, (kernel_size, stride) in enumerate(config.patch_embeddings):
            size = config.hidden_sizes[stage]
            self.patch_embeddings.append(
                OverlapPatchEmbeddings(kernel_size, stride, in_channels[stage], size, config.embedding_norm_eps))
            self.stages.append(nn.ModuleList(
                SegformerLayer(size, config.num_attention_heads[stage], config.sr_ratios[stage], config.mlp_ratio,
                               rates[first + i], config.layer_norm_eps, config.embedding_norm_eps)
                for i in range(config.depths[stage])))
            self.layer_norms.append(nn.LayerNorm(size, eps=config.layer_norm_eps))
            first += config.depths[stage]

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        features = []
        hidden = pixels
        for embed, layers, norm in zip(self.patch_embeddings, self.stages, self.layer_norms):
            tokens, height, width = embed(hidden)
            for layer in layers:
                tokens = layer(tokens, height, width)
            tokens = norm(tokens)
            hidden = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)
            features.append(hidden)
        return features


class SegformerHead(nn.Module):
    """All-MLP decoder: project every stage to one width, upsample to the first stage, fuse, classify."""

    def __init__(self, config: SegformerConfig, num_classes: int):
        super().__init__()
        width = config.decoder_hidden_size
        self.projections = nn.ModuleList(nn.Linear(size, width) for size in config.hidden_sizes)
        self.fuse = nn.Conv2d(width * len(config.hidden_sizes), width, kernel_size=1, bias=False)
        self.fuse_norm = nn.BatchNorm2d(width)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout2d(config.classifier_dropout)
        self.classifier = nn.Conv2d(width, num_classes, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        projected = []
        for feature, projection in zip(features, self.projections):
            batch, _, height, width = feature.shape
            mapped = projection(feature.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(batch, -1, height, width)
            if mapped.shape[-2:] != size:
                mapped = F.interpolate(mapped, size=size, mode="bilinear", align_corners=False)
            projected.append(mapped)
        # deepest stage first, as in the reference implementations
        fused = self.activation(self.fuse_norm(self.fuse(torch.cat(projected[::-1], dim=1))))
        return self.classifier(self.dropout(fused))


class Segformer(EncoderDecoder):
    """SegFormer for semantic segmentation: logits of the input's size, [B, num_classes, H, W]."""

    def __init__(self, config: SegformerConfig, num_classes: int):
        super().__init__()
        self.config = config
        self.arch = f"segformer_{config.name}"
        self.segformer_stem = config.stem
        self.encoder = MixTransformerEncoder(config)
        self.decoder = SegformerHead(config, num_classes)
        self.apply(_init_weights)
        # a small classifier start, as the authors' decode head (normal, std 0.01)
        nn.init.normal_(self.decoder.classifier.weight, std=0.01)
        nn.init.zeros_(self.decoder.classifier.bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.encoder(pixels))
        return F.interpolate(logits, size=pixels.shape[-2:], mode="bilinear", align_corners=False)


def _init_weights(module: nn.Module) -> None:
    """The MiT authors' initialisation: truncated normal Linear, fan-out normal convolutions, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
