"""The ``transformers`` decoders a level prior can run on (``model.arch``), one registration
each.

A backbone is driven through ``inputs_embeds``: the prior has its own token table, start /
class embedding and head, so the decoder's token table is unused (and frozen). For the top
level the same weights also make a stock causal LM (prior/stock.py), which needs to know
the LM class, the attribute that holds the decoder inside it and the decoder's token table.

Adding a backbone is one ``register(Backbone(...))`` call below; ``model.arch`` accepts
every registered name, and tests/test_backbones.py builds, runs and saves each one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.config import ConfigError
from engine.registry import register_entry

if TYPE_CHECKING:
    from prior.config import LevelModelConfig


@dataclass(frozen=True)
class Backbone:
    """How to build one kind of decoder from a level's model settings.

    ``make_config(cfg, positions, inner, **common)`` returns the ``transformers`` config
    for ``cfg`` (a ``LevelModelConfig``) with ``positions`` sequence positions and an MLP
    width of ``inner``, passing on ``common`` (the vocabulary and special-token ids, which
    the caller sets).
    ``model`` / ``causal_lm`` name the ``transformers`` classes of the bare decoder and of
    its LM; ``lm_body`` is the LM's attribute holding the decoder and ``token_table`` the
    decoder's token embedding (its state-dict key is ``<token_table>.weight``).
    ``embeds_dropout``: the decoder applies dropout to ``inputs_embeds`` itself (else the
    prior adds its own). ``rotary``: rotary position embeddings, which need an even head
    size.
    """

    name: str
    make_config: Callable[..., Any]
    model: str
    causal_lm: str
    lm_body: str
    token_table: str
    embeds_dropout: bool
    rotary: bool = False


BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    """Make ``backbone`` available as ``model.arch: <backbone.name>``."""
    return register_entry(BACKBONES, backbone, "arch")


def get_backbone(name: str) -> Backbone:
    """The registered backbone ``name``; a :class:`ConfigError` listing the names otherwise."""
    try:
        return BACKBONES[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"arch: unknown backbone {name!r}; choose from {', '.join(BACKBONES)}") from None


def transformers_class(name: str):
    """A class of ``transformers`` by name (imported on first use: it is slow to import)."""
    # imported on use, with transformers: both are slow to import
    from engine.torchvision_compat import ensure_torchvision

    ensure_torchvision()  # transformers imports torchvision when it is installed
    import transformers

    return getattr(transformers, name)


def _gpt2_config(cfg: LevelModelConfig, positions: int, inner: int, **common):
    return transformers_class("GPT2Config")(
        n_positions=positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
        n_inner=inner, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        **common,
    )


def _llama_config(cfg: LevelModelConfig, positions: int, inner: int, **common):
    return transformers_class("LlamaConfig")(
        hidden_size=cfg.n_embd, intermediate_size=inner, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
        max_position_embeddings=positions, attention_dropout=cfg.dropout, **common,
    )


register(Backbone("gpt2", _gpt2_config, model="GPT2Model", causal_lm="GPT2LMHeadModel",
                  lm_body="transformer", token_table="wte", embeds_dropout=True))
# llama applies no dropout to its inputs (GPT-2 does, embd_pdrop)
register(Backbone("llama", _llama_config, model="LlamaModel", causal_lm="LlamaForCausalLM",
                  lm_body="model", token_table="embed_tokens", embeds_dropout=False, rotary=True))
