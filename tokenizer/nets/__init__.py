"""Encoder / decoder networks of the tokenizer, chosen by ``model.net`` (see registry.py).

Importing this package registers every network; ``conv`` is the default.
"""

from tokenizer.nets import conv, vqgan  # noqa: F401 -- each registers its network
from tokenizer.nets.conv import Decoder, Encoder, ResBlock, downsampler, res_stack, upsampler
from tokenizer.nets.registry import NETS, NetEntry, net_entry, net_options, register_net

__all__ = ["NETS", "NetEntry", "net_entry", "net_options", "register_net", "Decoder", "Encoder",
           "ResBlock", "downsampler", "res_stack", "upsampler"]
