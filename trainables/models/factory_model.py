"""A model from a user's factory, seen as encoder and head: its `encoder` submodule, if it has one."""

from __future__ import annotations

from torch import nn

from trainables.models.transfer import EncoderDecoder


class FactoryModel(EncoderDecoder):
    """The user's module as `net` (state dict keys `net.*`); `encoder` is `net.encoder` or None."""

    def __init__(self, net: nn.Module, arch: str):
        super().__init__()
        self.arch = arch
        self.segformer_stem = None
        self.net = net

    @property
    def encoder(self):  # a view of net's own submodule: registering it twice would duplicate its keys
        return getattr(self.net, "encoder", None)

    def forward(self, pixels):
        output = self.net(pixels)
        if isinstance(output, dict):
            return output if self.training and output.get("aux") is not None else output["out"]
        return output
