"""Mamba language model: embedding -> n_layer pre-norm Mamba blocks -> final norm -> tied LM head.

State-dict keys are those of mamba_ssm's ``MambaLMHeadModel`` (``backbone.embedding.weight``,
``backbone.layers.{i}.norm.weight``, ``backbone.layers.{i}.mixer.*``, ``backbone.norm_f.weight``,
``lm_head.weight``), so an official checkpoint loads with ``load_state_dict``.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as ckpt

from genomamba.config import MambaConfig
from genomamba.errors import check_device
from genomamba.models import decode, graphed, graphed_train
from genomamba.models.cache import InferenceCache
from genomamba.models.io import (
    check_state_dict,
    config_from_hf,
    config_to_hf,
    read_pretrained,
    state_dict_from_hf,
    state_dict_to_hf,
    write_pretrained,
)
from genomamba.models.mixer import Block, LayerCache, RMSNorm
from genomamba.models.recompute import plain_saves
from genomamba.models.segmented import segmented_hidden
from genomamba.ops import add_rms_norm
from genomamba.ops.cuda.model_step import model_step


def _checkpointed(layer, hidden, residual):
    """One layer under activation checkpointing: everything is rebuilt in the backward already, so
    the layer keeps no recipes of its own (the recomputation runs through here too)."""
    with plain_saves():
        return layer(hidden, residual, None)


# CUDA launches take at most 65535 blocks on a grid's second and third axes, where several kernels
# (the conv, the Triton scan, the decode-step updates) put the batch: larger batches run through the
# backbone as consecutive slices of at most this many sequences
MAX_KERNEL_BATCH = 65535


def _batch_limit(device: torch.device) -> Optional[int]:
    """The most sequences one backbone call sends to the kernels on ``device`` (None: no limit)."""
    return MAX_KERNEL_BATCH if device.type == "cuda" else None


def _in_batch_slices(b: int, limit: int, run, cache: Optional[InferenceCache], states_in_place: bool):
    """``run(rows, cache_of_rows)`` over consecutive slices of at most ``limit`` of the ``b`` rows,
    outputs concatenated along the batch. A cache is sliced into views: a step updates them in place;
    a forward leaves new states in each slice's cache, gathered back into ``cache`` here."""
    outs, parts = [], []
    for start in range(0, b, limit):
        rows = slice(start, min(b, start + limit))
        part = None if cache is None else InferenceCache(
            [LayerCache(c.conv_state[rows], c.ssm_state[rows]) for c in cache.layers], cache.seqlen_offset)
        outs.append(run(rows, part))
        parts.append(part)
    if cache is not None and not states_in_place:
        for i, c in enumerate(cache.layers):
            c.conv_state = torch.cat([p.layers[i].conv_state for p in parts])
            c.ssm_state = torch.cat([p.layers[i].ssm_state for p in parts])
    return torch.cat(outs)


class MixerModel(nn.Module):
    """The backbone. forward(input_ids (b, l)) -> hidden states (b, l, d_model) after the final norm."""

    def __init__(self, config: MambaConfig, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model, device=device, dtype=dtype)
        self.layers = nn.ModuleList(Block(config, i, device=device, dtype=dtype) for i in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_epsilon, device=device, dtype=dtype) \
            if config.rms_norm else nn.LayerNorm(config.d_model, eps=config.norm_epsilon, device=device, dtype=dtype)
        for p in self.norm_f.parameters():
            p._no_weight_decay = True

    gradient_checkpointing = False  # recompute each layer in backward: activations O(n_layer * b * l * d_model)
    segment_len: Optional[int] = None  # read longer inputs in segments carrying the states (MambaLM.set_segment_len)

    def forward(self, input_ids=None, cache: Optional[InferenceCache] = None, inputs_embeds=None):
        sliced = self._in_slices(self.forward, input_ids, cache, inputs_embeds, states_in_place=False)
        if sliced is not None:
            return sliced
        if self.segment_len is not None and cache is None and inputs_embeds is None \
                and input_ids.shape[1] > self.segment_len:
            return segmented_hidden(self, input_ids, self.segment_len)
        hidden = self.embedding(input_ids) if inputs_embeds is None else inputs_embeds
        drop = float(self.config.dropout) if self.training else 0.0
        if drop:
            hidden = F.dropout(hidden, drop, True)
        residual = None
        checkpoint = self.gradient_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if checkpoint:
                hidden, residual = ckpt(_checkpointed, layer, hidden, residual, use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual, None if cache is None else cache.layers[i])
            if drop:
                hidden = F.dropout(hidden, drop, True)
        return self._final_norm(hidden, residual)

    @staticmethod
    def _in_slices(call, input_ids, cache, inputs_embeds, states_in_place: bool):
        """``call`` (forward or step) over slices of a batch larger than one kernel launch takes on its
        device (:data:`MAX_KERNEL_BATCH`); None for a batch that fits."""
        first = input_ids if inputs_embeds is None else inputs_embeds
        limit = _batch_limit(first.device)
        if limit is None or first.shape[0] <= limit:
            return None
        return _in_batch_slices(first.shape[0], limit, lambda rows, part: call(
            None if input_ids is None else input_ids[rows], part,
            None if inputs_embeds is None else inputs_embeds[rows]), cache, states_in_place)

    def _final_norm(self, hidden, residual):
        if isinstance(self.norm_f, RMSNorm):
            return add_rms_norm(hidden, residual, self.norm_f.weight, self.norm_f.eps)[0]
        residual = hidden if residual is None else residual + hidden
        return self.norm_f(residual.to(self.norm_f.weight.dtype))

    def allocate_cache(self, batch_size: int, device=None, dtype=None) -> InferenceCache:
        """Zero recurrent states of every layer for ``batch_size`` sequences."""
        return InferenceCache([layer.mixer.allocate_cache(batch_size, device, dtype) for layer in self.layers])

    def step(self, input_ids, cache: InferenceCache, inputs_embeds=None):
        """input_ids: (b,) or (b, 1) -> hidden (b, 1, d_model); advances ``cache`` by one token."""
        sliced = self._in_slices(self.step, input_ids, cache, inputs_embeds, states_in_place=True)
        if sliced is not None:
            return sliced
        if inputs_embeds is None:
            hidden = self.embedding(input_ids.reshape(-1, 1))
        else:
            hidden = inputs_embeds.reshape(inputs_embeds.shape[0], 1, -1)
        residual = None
        for i, layer in enumerate(self.layers):
            hidden, residual = layer.step(hidden, residual, cache.layers[i])
        return self._final_norm(hidden, residual)


class MambaLM(nn.Module):
    """Mamba language model (mamba_ssm ``MambaLMHeadModel`` layout).

    ``model(input_ids)`` returns logits ``(b, l, padded_vocab_size)``. Pass an :class:`InferenceCache`
    to continue from (and update) recurrent states: this is how long sequences are processed in pieces.
    """

    def __init__(self, config: MambaConfig, device=None, dtype=None):
        super().__init__()
        if not isinstance(config, MambaConfig):
            raise ValueError(f"config: expected a genomamba.MambaConfig, got {type(config).__name__}")
        self.config = config
        self.backbone = MixerModel(config, device=device, dtype=dtype)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False, device=device, dtype=dtype)
        self.apply(self._init_weights)
        self.tie_weights()

    # ------------------------------------------------------------------ init (mamba_ssm's scheme)
    def _init_weights(self, module):
        cfg = self.config
        if isinstance(module, nn.Linear):
            if module.bias is not None and not getattr(module.bias, "_no_reinit", False):
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=cfg.initializer_range)
        if cfg.rescale_prenorm_residual and isinstance(module, Block):
            # GPT-2 style: scale residual-branch output projections by 1/sqrt(n_layer) at init
            p = module.mixer.out_proj.weight
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            with torch.no_grad():
                p /= math.sqrt(cfg.n_layer)

    def tie_weights(self):
        if self.config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    # ------------------------------------------------------------------ forward / step
    def _check_ids(self, input_ids) -> torch.Tensor:
        """``input_ids`` checked: a (batch, length) integer tensor with at least one token, ids in range;
        returned as int64 when it came in a narrower integer type (e.g. a tokenizer's uint8 array)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids: expected a (batch, length) integer tensor, got {got}")
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids: expected an integer tensor, got {input_ids.dtype}")
        if not input_ids.numel():
            raise ValueError(f"input_ids: expected at least one token in each of at least one sequence, "
                             f"got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            input_ids = input_ids.long()
        vocab = self.config.padded_vocab_size
        if input_ids.device.type != "cpu":
            # Checked on the device, in order with the forward: reading the range back to the host
            # would stall every call until the previous one finished (a short forward then costs its
            # kernels plus its launches, one after the other). An id out of range stops the run at the
            # next synchronisation with a device-side assertion, as an embedding lookup there would.
            torch._assert_async(((input_ids >= 0) & (input_ids < vocab)).all())
            return input_ids
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(f"input_ids: token ids must lie in [0, {vocab}), got range [{lo}, {hi}]")
        return input_ids

    def forward(self, input_ids, cache: Optional[InferenceCache] = None, num_last_tokens: int = 0):
        """input_ids: (b, l) -> logits (b, l, padded_vocab_size) (only the last ``num_last_tokens`` if > 0).

        On CUDA, a shape called again replays captured CUDA graphs: the forward without gradients
        (:mod:`genomamba.models.graphed`), the forward and its backward with them
        (:mod:`genomamba.models.graphed_train`); the results are the same."""
        input_ids = self._check_ids(input_ids)
        num_last_tokens = max(int(num_last_tokens), 0)
        hidden = self._hidden(input_ids, cache)
        if num_last_tokens > 0:
            hidden = hidden[:, -num_last_tokens:]
        return self.lm_head(hidden)

    def _hidden(self, input_ids, cache: Optional[InferenceCache]):
        """The backbone's output, from a replayed graph where :mod:`graphed` allows (the LM head stays
        outside the graph, so no captured forward holds a (b, l, vocab) tensor); advances the cache."""
        hidden = None
        if graphed.eligible(self, input_ids, cache):
            hidden = graphed.graphs_of(self).run(self, lambda ids, c: self.backbone(ids, cache=c), input_ids, cache)
        elif graphed_train.eligible(self, input_ids, cache):
            hidden = graphed_train.graphs_of(self).run(self, input_ids)
        if hidden is None:
            hidden = self.backbone(input_ids, cache=cache)
        if cache is not None:
            cache.seqlen_offset += input_ids.shape[1]
        return hidden

    def gradient_checkpointing_enable(self, enable: bool = True) -> "MambaLM":
        """Trade compute for memory at long context: each layer is recomputed during backward."""
        self.backbone.gradient_checkpointing = enable
        return self

    def set_segment_len(self, segment_len: Optional[int]) -> "MambaLM":
        """Read inputs longer than ``segment_len`` tokens in segments that carry the recurrent states
        (None: whole inputs). Exact: the logits and every gradient are those of the whole input. In
        training only each segment's starting states and the output are kept, and the backward
        recomputes one segment at a time, so activation memory is that of one segment (about one
        extra forward pass of compute). Without gradients, memory is bounded the same way."""
        if segment_len is not None and (isinstance(segment_len, bool) or not isinstance(segment_len, int)
                                        or segment_len < 1):
            raise ValueError(f"segment_len: expected a positive int or None, got {segment_len!r}")
        self.backbone.segment_len = segment_len
        return self

    def set_context_parallel(self, cp) -> "MambaLM":
        """Split sequences along their length over the ranks of ``cp`` (a
        ``genomamba.parallel.ContextParallel``; None: whole sequences): each rank then passes its
        slice, and every layer exchanges a conv halo and its state summaries with the group."""
        for layer in self.backbone.layers:
            layer.mixer.context_parallel = cp
        return self

    def hidden_states(self, input_ids, cache: Optional[InferenceCache] = None):
        """input_ids: (b, l) -> final-norm hidden states (b, l, d_model) (for embeddings and heads)."""
        input_ids = self._check_ids(input_ids)
        return self._hidden(input_ids, cache)

    def allocate_cache(self, batch_size: int, device=None, dtype=None) -> InferenceCache:
        return self.backbone.allocate_cache(batch_size, device, dtype)

    def step(self, input_ids, cache: InferenceCache):
        """One token per sequence: input_ids (b,) or (b, 1) -> logits (b, padded_vocab_size).

        On CUDA at batch <= 4 one kernel runs the whole step (:mod:`genomamba.ops.cuda.model_step`);
        otherwise, or with ``GENOMAMBA_DECODE_STEP=layers``, the layers step one after another."""
        logits = model_step(self, input_ids, cache) if input_ids.is_cuda else None
        if logits is None:
            logits = self.lm_head(self.backbone.step(input_ids, cache)[:, 0])
        cache.seqlen_offset += 1
        return logits

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: Union[int, Sequence[int], None] = None, eos_token_id: Optional[int] = None,
                 vocab_size: Optional[int] = None, allowed_token_ids: Optional[Sequence[int]] = None,
                 prefill_chunk: Optional[int] = None, cuda_graph: Optional[bool] = None,
                 progress: Optional[Callable[[int], object]] = None):
        """Sample ``max_new_tokens`` after the prompt; memory does not grow with the generated length
        (only the (b, d_inner, n) states and the output ids are kept). ``temperature=0`` is greedy.

        input_ids: (b, l) with l >= 1 -> (b, l + max_new_tokens) token ids; or a list of 1-D tensors
        of any lengths -> a list of 1-D tensors (each prompt followed by its new tokens), on the
        model's device. Prompts of different lengths are read separately (no padding enters a
        state) and then decoded as one batch: the result equals generating each alone.
        ``vocab_size`` limits sampling to real tokens (the padded embedding rows are never sampled;
        defaults to config.vocab_size). ``allowed_token_ids`` restricts sampling to those ids instead
        (e.g. the four bases). ``eos_token_id``: a sequence that sampled it gets only that id after.
        ``prefill_chunk`` reads the prompt that many tokens at a time (bounded memory for long prompts).
        ``seed``: one int (one generator for the batch), or one int per sequence (each sequence draws
        from its own generator, so its sample does not depend on the batch it is decoded in).
        ``cuda_graph``: replay the decode step from a CUDA graph (None: on for a model on CUDA,
        unless ``GENOMAMBA_CUDA_GRAPH=0``); see :mod:`genomamba.models.decode`.
        ``progress``: called with the number of tokens sampled since its last call (over the batch) every
        few hundred steps and after the last, e.g. a progress bar's ``update``.
        """
        return decode.generate(self, input_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                               top_p=top_p, seed=seed, eos_token_id=eos_token_id, vocab_size=vocab_size,
                               allowed_token_ids=allowed_token_ids, prefill_chunk=prefill_chunk,
                               cuda_graph=cuda_graph, progress=progress)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: Union[str, os.PathLike]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (a tied LM head is stored once)."""
        state = self.state_dict()
        if self.config.tie_embeddings:
            state.pop("lm_head.weight", None)
        return write_pretrained(directory, self.config, state)

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike], device=None, dtype=None, strict: bool = True) -> "MambaLM":
        """Load a genomamba, mamba_ssm or HF ``MambaForCausalLM`` directory; no pickled code ever runs.

        ``strict=False`` accepts a checkpoint that lacks some parameters or holds extra ones: the
        missing ones get the initialisation a new model would give them, the extra ones are ignored,
        and a warning names both. ``dtype``: a floating-point torch dtype or its name ("bfloat16"); None
        builds float32 weights whatever the checkpoint stores (the precision training keeps)."""
        dtype = _floating_dtype(dtype)
        check_device(device)
        cfg, sd, weights, cfg_path = read_pretrained(path)
        with torch.device("meta"):
            model = cls(cfg)
        # the parameters' tags (weight decay off for A_log, D, norms, biases): to_empty below gives
        # every parameter a new tensor object, which starts without them
        no_decay = {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
        expected = {k: v for k, v in model.state_dict().items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
        check_state_dict(sd, expected, weights, cfg_path, strict=strict)
        missing = [k for k in expected if k not in sd]
        unexpected = sorted(k for k in sd if k not in expected)
        if unexpected:
            warnings.warn(f"{weights}: ignored {len(unexpected)} tensor(s) that the model described by {cfg_path} "
                          f"has no parameter for: {_listing(unexpected)}", UserWarning, stacklevel=2)
            sd = {k: v for k, v in sd.items() if k in expected}
        if missing:
            warnings.warn(f"{weights}: holds no value for {len(missing)} parameter(s), which keep a new model's "
                          f"initialisation: {_listing(missing)}", UserWarning, stacklevel=2)
            model = cls(cfg, device=device or "cpu")  # initialised as training from scratch would start
        else:
            model = model.to_empty(device=device or "cpu")  # every tensor is overwritten below
        model.load_state_dict(sd, strict=False, assign=False)
        model.tie_weights()
        if dtype is not None:
            model = model.to(dtype)
        for name, p in model.named_parameters():
            if name in no_decay:
                p._no_weight_decay = True
        return model.eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())


def _floating_dtype(dtype) -> Optional[torch.dtype]:
    """``dtype`` as a floating-point torch dtype (None stays None); a ValueError naming it otherwise."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, dtype)
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    raise ValueError(f"dtype: expected a floating-point torch dtype or its name (float32, bfloat16, float16, "
                     f"float64), got {dtype!r}")


def _listing(keys: Sequence[str], n: int = 20) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def optimizer_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups from the tags set where parameters are created (``_no_weight_decay``)."""
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if getattr(p, "_no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def from_hf(hf_model) -> MambaLM:
    """Build a genomamba MambaLM from an instantiated HF ``MambaForCausalLM`` (weights copied)."""
    model = MambaLM(config_from_hf(hf_model.config.to_dict()))
    model.load_state_dict(state_dict_from_hf(hf_model.state_dict()), strict=True)
    return model


def to_hf(model: MambaLM):
    """Build an HF ``MambaForCausalLM`` from a genomamba MambaLM (needs ``transformers``)."""
    import transformers  # optional dependency: only this converter needs it

    hf = transformers.MambaForCausalLM(transformers.MambaConfig(**config_to_hf(model.config)))
    hf.load_state_dict(state_dict_to_hf(model.state_dict()), strict=True)
    return hf
