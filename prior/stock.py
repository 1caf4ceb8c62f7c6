"""A level prior as a stock ``transformers`` causal LM, so ``generate()`` can run it.

Our priors drive a ``transformers`` backbone through ``inputs_embeds`` with their own token
table, start / class embedding and head. For the top level (no per-position conditioning)
that is exactly the backbone's causal LM (``GPT2LMHeadModel``, ``LlamaForCausalLM``, ...:
prior/backbones.py) whose vocabulary is the codebook: the start embedding is the prompt (``inputs_embeds`` of length 1) and every code
after it enters through the LM's token table. This builds that model with the same weights:
the baseline that the sampler's own decode loop is benchmarked and cross-checked against.
Lower levels add the upper levels' conditioning at every position, which ``generate()``
has no way to do.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch

from prior.backbones import get_backbone, transformers_class
from prior.model import LevelPrior


def stock_causal_lm(model: LevelPrior):
    """An equivalent ``transformers`` causal LM with copies of ``model``'s weights."""
    if model.level != 0:
        raise ValueError(
            f"level {model.level}: only the top level (0) is a plain causal LM; lower levels add "
            "the upper levels' conditioning at every position")
    if model.label_every_position:
        raise ValueError("label_every_position: the label is added at every position, which a "
                         "stock causal LM has no way to do")
    backbone = get_backbone(model.cfg.arch)
    config = copy.deepcopy(model.backbone.config)
    config.vocab_size = model.codebook_size
    config.tie_word_embeddings = False  # our token table and head are separate weights
    lm = transformers_class(backbone.causal_lm)(config)
    state = dict(model.backbone.state_dict())
    state[f"{backbone.token_table}.weight"] = model.tok_emb.weight.detach()
    getattr(lm, backbone.lm_body).load_state_dict(state)
    lm.lm_head.weight.data.copy_(model.head.weight.detach())
    return lm.to(model.head.weight.device).eval()


@torch.no_grad()
def stock_generate(lm, model: LevelPrior, n: int, labels: Optional[torch.Tensor] = None,
                   greedy: bool = False, cache: str = "dynamic") -> torch.Tensor:
    """``n`` top-level code sequences (n, N) in sequence order from ``lm.generate()``
    (plain sampling at temperature 1, or greedy). ``cache``: generate's cache_implementation
    ('dynamic' or 'static')."""
    start, _ = model.condition([], labels, n)
    kwargs = dict(do_sample=not greedy, top_k=None, top_p=None, temperature=None if greedy else 1.0)
    if cache != "dynamic":
        kwargs["cache_implementation"] = cache
    return lm.generate(
        inputs_embeds=start, attention_mask=torch.ones(n, 1, dtype=torch.long, device=start.device),
        max_new_tokens=model.length, min_new_tokens=model.length, pad_token_id=0, eos_token_id=None,
        **kwargs,
    )
