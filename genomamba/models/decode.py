"""The decode loop behind ``MambaLM.generate``: prompts of any lengths in one batch, and a decode
step replayed from a CUDA graph on GPUs.

A recurrent model reads a prompt into a fixed-size state, so prompts of different lengths need no
padding: each group of equal-length prompts is prefilled on its own, the final states and
last-position logits are stacked back into the callers' order, and one batched step loop samples
every sequence at once. The result is exactly what generating each prompt alone gives.

On CUDA the one-token step (embedding, every layer's ``step``, final norm, LM head) is captured
once per batch size into a ``torch.cuda.CUDAGraph`` whose static input ids, recurrent states and
logits are fixed tensors: each new token then costs one replay instead of hundreds of kernel
launches. The graph ends with the greedy choice: the argmax of the logits over the allowed tokens
(a static bias of 0 or -inf per token id), written to the graph's ``token`` and back into its input
ids, so greedy decoding is one replay and one copy per token with no sampling kernels in between.
Temperature / top-k / top-p sampling is a second, small captured graph per filter kind (top-k size,
nucleus or not; ``DecodeSampler``): the uniform noise of the Gumbel-max draw (``genomamba.models.sampling``) is
drawn from the caller's generator into its static input, then one replay filters, draws and writes
the token into the step's input ids, so a sampled token costs one noise kernel (one per sequence
with a seed per sequence, ``generate(prompts, seed=[...])``) and two replays, and the tokens equal
the eager loop's for the same seed. A capture that fails, or whose first replay
disagrees with the eager computation, is dropped with one warning and that part runs eagerly.
``GENOMAMBA_CUDA_GRAPH`` (``auto`` / ``0`` / ``1``) overrides the default.
"""

from __future__ import annotations

import math
import numbers
import operator
import warnings
from collections import OrderedDict
from typing import Callable, Optional, Sequence

import torch

from genomamba.models import graphed
from genomamba.models.cache import InferenceCache
from genomamba.models.graphed import ENV_CUDA_GRAPH, use_cuda_graph
from genomamba.models.mixer import LayerCache
from genomamba.models.sampling import draw, fill_uniform, filter_values, filters, greedy, noise_like
from genomamba.ops.checks import first_mismatch

MAX_GRAPHS = 8  # captured batch sizes kept per model (least recently used dropped first)
MAX_SAMPLERS = 4  # captured samplers (filter kinds) kept per decode graph (oldest dropped first)
DONE_CHECK_EVERY = 64  # with an EOS id: look whether every sequence has ended once per this many tokens
PROGRESS_EVERY = 256  # a ``progress`` callback hears of the new tokens once per this many steps
_warned: set = set()  # capture failures already reported (one warning per reason and process)


# ----------------------------------------------------------------------------- inputs


def check_prompts(prompts, padded_vocab: int, device) -> list[torch.Tensor]:
    """A list of 1-D integer tensors -> the same on ``device`` (int64); ValueError naming the
    argument and the prompt index for anything else."""
    if isinstance(prompts, torch.Tensor) or not isinstance(prompts, (list, tuple)):
        raise ValueError(f"input_ids: expected a (batch, length) tensor or a list of 1-D tensors, "
                         f"got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("input_ids: empty list; give at least one prompt")
    out = []
    for i, p in enumerate(prompts):
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"input_ids[{i}]: expected a 1-D integer tensor, got {type(p).__name__}")
        if p.dim() != 1:
            raise ValueError(f"input_ids[{i}]: expected a 1-D integer tensor, got shape {tuple(p.shape)}")
        if p.dtype.is_floating_point or p.dtype.is_complex or p.dtype == torch.bool:
            raise ValueError(f"input_ids[{i}]: expected an integer tensor, got {p.dtype}")
        if p.numel() == 0:
            raise ValueError(f"input_ids[{i}]: empty prompt; generation needs at least one token")
        lo, hi = int(p.min()), int(p.max())
        if lo < 0 or hi >= padded_vocab:
            raise ValueError(f"input_ids[{i}]: token ids must lie in [0, {padded_vocab}), got range [{lo}, {hi}]")
        out.append(p.to(device=device, dtype=torch.long))
    return out


SEED_MAX = 2**32 - 1  # seeds lie in [0, SEED_MAX]: the CPU generator reads only a seed's low 32 bits, so
# a larger seed would silently repeat a smaller one's samples


def _is_int(x) -> bool:
    """A Python or NumPy integer (or anything else ``operator.index`` takes), not a bool."""
    if isinstance(x, bool) or getattr(x, "dtype", None) == torch.bool:
        return False
    try:
        operator.index(x)
    except TypeError:
        return False
    return True


def _is_real(x) -> bool:
    """A Python or NumPy int or float, not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_sampling(temperature, top_k, top_p) -> tuple[float, int, float]:
    """The sampling settings (Python or NumPy numbers) as ``(float, int, float)``; ValueError naming
    the argument for anything else. ``temperature`` must be finite (<= 0: greedy; a huge one draws
    uniformly among the allowed tokens), ``top_k`` >= 0 (0: off), ``0 < top_p <= 1`` (1: off)."""
    if not _is_real(temperature) or not math.isfinite(temperature):
        raise ValueError(f"temperature: expected a finite number (<= 0: greedy), got {temperature!r}")
    if not _is_int(top_k) or operator.index(top_k) < 0:
        raise ValueError(f"top_k: expected an int >= 0, got {top_k!r}")
    if not _is_real(top_p) or not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p: expected 0 < top_p <= 1, got {top_p!r}")
    return float(temperature), operator.index(top_k), float(top_p)


def check_seed(seed, rows: Optional[int] = None, count: int = 1, unit: str = "sample") -> None:
    """None or an int (a Python or NumPy integer; not a bool) in ``[0, SEED_MAX]``; with ``rows``,
    also a list of ``rows`` such ints (one seed per sequence). ``count``: how many consecutive seeds
    one int stands for (``seed``, ``seed + 1``, ... ``seed + count - 1``, one per ``unit``: sample,
    prompt), all of which must lie in that range."""
    if seed is None:
        return
    if rows is not None and isinstance(seed, (list, tuple)):
        if len(seed) != rows:
            raise ValueError(f"seed: {len(seed)} seeds for {rows} sequences; give one per sequence (or one int)")
        for i, s in enumerate(seed):
            if not _is_int(s):
                raise ValueError(f"seed[{i}]: expected an int, got {s!r}")
            if not 0 <= operator.index(s) <= SEED_MAX:
                raise ValueError(f"seed[{i}]: expected an int in [0, {SEED_MAX}], got {s!r}")
        return
    if not _is_int(seed):
        want = "an int or None" if rows is None else "an int, a list of ints (one per sequence) or None"
        raise ValueError(f"seed: expected {want}, got {seed!r}")
    value = operator.index(seed)
    if not 0 <= value <= SEED_MAX:
        raise ValueError(f"seed: expected an int in [0, {SEED_MAX}], got {value}")
    if value + count - 1 > SEED_MAX:
        raise ValueError(f"seed: {value} is too large for {count} {unit}s: {unit} i draws from seed + i, and "
                         f"seeds lie in [0, {SEED_MAX}]; give a seed <= {SEED_MAX - count + 1}")


def check_allowed(allowed_token_ids, padded_vocab: int) -> list[int]:
    """``allowed_token_ids`` (a non-empty sequence of ints in ``[0, padded_vocab)``) as a list of ints;
    ValueError naming the argument (and the entry) for anything else."""
    if isinstance(allowed_token_ids, (str, bytes)) or not hasattr(allowed_token_ids, "__iter__"):
        raise ValueError(f"allowed_token_ids: expected a list of token ids, got {type(allowed_token_ids).__name__}")
    allowed = []
    for i, t in enumerate(allowed_token_ids):
        if not _is_int(t) or not 0 <= operator.index(t) < padded_vocab:
            raise ValueError(f"allowed_token_ids[{i}]: expected an int id in [0, {padded_vocab}), got {t!r}")
        allowed.append(operator.index(t))
    if not allowed:
        raise ValueError("allowed_token_ids: empty; give at least one token id (or None: every token)")
    return allowed


def check_eos(eos_token_id, vocab: int, allowed: Optional[list[int]]) -> int:
    """``eos_token_id`` as an int that sampling can produce: in ``[0, vocab)``, or among ``allowed``
    when the allowed ids are given; ValueError naming the argument otherwise."""
    if not _is_int(eos_token_id):
        raise ValueError(f"eos_token_id: expected an int token id, got {eos_token_id!r}")
    eos = operator.index(eos_token_id)
    if allowed is not None:
        if eos not in allowed:
            raise ValueError(f"eos_token_id: {eos} is not among allowed_token_ids, so it could never be "
                             f"generated; add it to allowed_token_ids or choose an allowed id")
    elif not 0 <= eos < vocab:
        raise ValueError(f"eos_token_id: expected an id in [0, {vocab}) (the ids sampling draws from), got {eos}")
    return eos


def make_generators(seed, device):
    """``seed`` (checked by :func:`check_seed`) as what the draws take: None, one generator, or one
    generator per sequence."""
    if seed is None:
        return None
    if isinstance(seed, (list, tuple)):
        return [torch.Generator(device=device).manual_seed(int(s)) for s in seed]
    return torch.Generator(device=device).manual_seed(int(seed))


# ----------------------------------------------------------------------------- prefill


def prefill(model, prompts: list[torch.Tensor], prefill_chunk: Optional[int], graphs: bool = True):
    """Read every prompt into its recurrent state. Prompts of equal length run as one batch (no
    padding ever enters a state). Returns (cache (b, ...) in the prompts' order, last-position
    logits (b, padded_vocab))."""
    dev = prompts[0].device
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    if len(groups) == 1:  # one length: no reassembly needed
        return _prefill_group(model, torch.stack(prompts), prefill_chunk, graphs)
    b = len(prompts)
    cache = logits = None
    for length, idx in groups.items():
        part_cache, part_logits = _prefill_group(model, torch.stack([prompts[i] for i in idx]), prefill_chunk, graphs)
        if cache is None:
            cache = InferenceCache([
                LayerCache(c.conv_state.new_empty((b, *c.conv_state.shape[1:])),
                           c.ssm_state.new_empty((b, *c.ssm_state.shape[1:])))
                for c in part_cache.layers
            ])
            logits = part_logits.new_empty((b, part_logits.shape[1]))
        where = torch.tensor(idx, device=dev)
        for whole, part in zip(cache.layers, part_cache.layers):
            whole.conv_state.index_copy_(0, where, part.conv_state)
            whole.ssm_state.index_copy_(0, where, part.ssm_state)
        logits.index_copy_(0, where, part_logits)
    return cache, logits


def _prefill_group(model, ids: torch.Tensor, prefill_chunk: Optional[int], graphs: bool = True):
    cache = model.allocate_cache(ids.shape[0], device=ids.device)
    step = prefill_chunk or ids.shape[1]
    logits = None
    for start in range(0, ids.shape[1], step):
        piece = ids[:, start:start + step]
        # the whole prompt, or a full chunk of it: captured at once (its decode graph is too)
        when = ("first" if piece.shape[1] == step else "second") if graphs else "never"
        with graphed.capture_policy(when):
            logits = model(piece, cache=cache, num_last_tokens=1)[:, -1]
    return cache, logits


# ----------------------------------------------------------------------------- the captured step


def _fingerprint(model) -> tuple:
    """Where the model's weights live: a captured graph reads these addresses, so any change
    (``.to(dtype)``, a moved or replaced parameter) means capturing again."""
    return tuple((t.data_ptr(), t.dtype, tuple(t.shape)) for t in [*model.parameters(), *model.buffers()])


class DecodeGraphs:
    """Captured decode steps of one model, by (batch, dtype, device); at most ``MAX_GRAPHS`` kept.
    A key whose capture failed maps to None (eager from then on). Copies and pickles of a model
    start with no graphs."""

    def __init__(self):
        self.graphs: OrderedDict = OrderedDict()

    def __deepcopy__(self, memo):
        return DecodeGraphs()

    def __reduce__(self):
        return (DecodeGraphs, ())

    def get(self, model, batch: int, device: torch.device) -> Optional["DecodeGraph"]:
        dtype = next(model.parameters()).dtype
        key = (batch, dtype, str(device))
        fp = _fingerprint(model)
        if key in self.graphs:
            g = self.graphs[key]
            if g is None:
                return None
            if g.fingerprint == fp:
                self.graphs.move_to_end(key)
                return g
            del self.graphs[key]
        try:
            g = DecodeGraph(model, batch, device, fp)
        except Exception as exc:  # anything that breaks capture: decode eagerly, never a wrong result
            _recover_stream(device)
            why = f"{type(exc).__name__}: {str(exc)[:300]}"
            if why not in _warned:
                _warned.add(why)
                warnings.warn(f"genomamba: the decode step could not be captured in a CUDA graph ({why}); "
                              f"decoding eagerly. Set {ENV_CUDA_GRAPH}=0 to skip the attempt.",
                              RuntimeWarning, stacklevel=2)
            g = None
        self.graphs[key] = g
        while len(self.graphs) > MAX_GRAPHS:
            self.graphs.popitem(last=False)
        return g


def _recover_stream(device) -> None:
    try:
        torch.cuda.synchronize(device)
    except Exception:  # the failed capture already reported; the eager path re-raises real errors
        pass


class DecodeGraph:
    """One captured ``model.step`` for a batch size: ``ids`` (b,) in, ``logits`` (b, vocab) and the
    greedy ``token`` (b,) out (also written back into ``ids``), ``cache`` the recurrent states the
    step reads and updates in place. Load states with :meth:`load`, set the allowed ids with
    :meth:`allow`, then per token :meth:`replay` (writing ``ids`` first unless decoding greedily)."""

    def __init__(self, model, batch: int, device: torch.device, fingerprint: tuple):
        self.fingerprint = fingerprint
        self.samplers: dict = {}  # (k, nucleus) -> DecodeSampler, or None where its capture failed
        self.cache = model.allocate_cache(batch, device=device)
        self.ids = torch.zeros(batch, dtype=torch.long, device=device)
        self.bias = self._default_bias(model, device)
        before = self._addresses()
        # warm up on a side stream (kernels compile and backends are picked outside the capture)
        side = graphed.side_stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._body(model)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits, self.token = self._body(model)
        if self._addresses() != before:
            raise RuntimeError("the step replaced its cache tensors instead of updating them in place")
        self._self_check(model, batch, device)

    @staticmethod
    def _default_bias(model, device) -> torch.Tensor:
        """(padded vocab,) float32: 0 where the greedy token may fall, -inf elsewhere."""
        bias = torch.zeros(model.config.padded_vocab_size, dtype=torch.float32, device=device)
        bias[model.config.vocab_size:] = float("-inf")
        return bias

    def _body(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """What one replay runs: the step on ``ids``, then the greedy token, written back into ``ids``
        (the next replay reads it unless the caller writes another)."""
        logits = model.step(self.ids, self.cache)
        token = self._greedy(logits)
        self.ids.copy_(token)
        return logits, token

    def _greedy(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits.float() + self.bias).argmax(-1)

    def _addresses(self) -> list:
        return [(c.conv_state.data_ptr(), c.ssm_state.data_ptr()) for c in self.cache.layers]

    def _self_check(self, model, batch: int, device) -> None:
        """One replay from nonzero states against the eager step from copies of them (the logits),
        and the replayed greedy token against the argmax of the replayed logits."""
        gen = torch.Generator(device=device).manual_seed(0)
        for c in self.cache.layers:
            c.conv_state.copy_(torch.randn(c.conv_state.shape, generator=gen, device=device))
            c.ssm_state.copy_(torch.randn(c.ssm_state.shape, generator=gen, device=device))
        self.ids.copy_(torch.randint(0, model.config.vocab_size, (batch,), generator=gen, device=device))
        ref = model.step(self.ids.clone(), self.cache.clone())
        self.replay()
        tol = 1e-3 if self.logits.dtype == torch.float32 or self.logits.dtype == torch.float64 else 5e-2
        bad = first_mismatch((("logits", self.logits, ref),), tol)
        if bad is not None:
            raise RuntimeError(f"the replayed step differs from the eager step (max |diff| {bad[1]:.3g})")
        if not torch.equal(self.token, self._greedy(self.logits)) or not torch.equal(self.ids, self.token):
            raise RuntimeError("the replayed greedy token differs from the argmax of the replayed logits")

    def allow(self, vocab: int, mask: Optional[torch.Tensor]) -> None:
        """What the greedy token may be for the next replays: ids below ``vocab``, or where ``mask``
        (padded vocab,) is 0 when it is given (-inf elsewhere), as the eager loop samples."""
        if mask is not None:
            self.bias.copy_(mask)
        else:
            self.bias.zero_()
            self.bias[vocab:] = float("-inf")

    def load(self, cache: InferenceCache) -> None:
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.conv_state.copy_(theirs.conv_state)
            mine.ssm_state.copy_(theirs.ssm_state)

    def replay(self) -> torch.Tensor:
        self.graph.replay()
        return self.logits

    def sampler(self, k: int, nucleus: bool) -> Optional["DecodeSampler"]:
        """The captured draw for this step's logits with the filters ``k`` / ``nucleus`` (see
        ``sampling.filters``); None where it could not be captured (the loop then samples eagerly)."""
        key = (int(k), bool(nucleus))
        if key not in self.samplers:
            while len(self.samplers) >= MAX_SAMPLERS:  # oldest first
                self.samplers.pop(next(iter(self.samplers)))
            try:
                self.samplers[key] = DecodeSampler(self, *key)
            except Exception as exc:
                _recover_stream(self.ids.device)
                why = f"{type(exc).__name__}: {str(exc)[:300]}"
                if why not in _warned:
                    _warned.add(why)
                    warnings.warn(f"genomamba: sampling could not be captured in a CUDA graph ({why}); sampling "
                                  f"eagerly between replays of the decode step.", RuntimeWarning, stacklevel=3)
                self.samplers[key] = None
        return self.samplers[key]


class DecodeSampler:
    """One captured draw (:func:`genomamba.models.sampling.draw`) from a :class:`DecodeGraph`'s logits
    plus its bias: static ``noise`` (b, padded vocab) and filter values in, the ``token`` out (also
    written into the step's input ids). Per token: :meth:`draw` fills the noise from the caller's
    generator, exactly as the eager sampler does, and replays."""

    def __init__(self, step: DecodeGraph, k: int, nucleus: bool):
        self.step, self.k, self.nucleus = step, k, nucleus
        device = step.ids.device
        self.noise = torch.full(step.logits.shape, 0.5, dtype=torch.float32, device=device)
        self.values = filter_values(1.0, 1.0, device)
        side = graphed.side_stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._body()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.token = self._body()
        self._self_check()

    def _body(self) -> torch.Tensor:
        token = draw(self.step.logits.float() + self.step.bias, self.noise, *self.values, self.k, self.nucleus)
        self.step.ids.copy_(token)
        return token

    def set(self, temperature: float, top_p: float) -> None:
        for mine, value in zip(self.values, filter_values(temperature, top_p, self.noise.device)):
            mine.copy_(value)

    def draw(self, generator) -> torch.Tensor:
        fill_uniform(self.noise, generator)
        self.graph.replay()
        return self.token

    def _self_check(self) -> None:
        """One replay on random logits and noise, with filters that act, against the eager draw."""
        gen = torch.Generator(device=self.noise.device).manual_seed(0)
        saved_bias = self.step.bias.clone()
        self.step.logits.copy_(torch.randn(self.step.logits.shape, generator=gen, device=self.noise.device) * 3)
        self.set(0.8, 0.9)
        self.step.bias.zero_()
        self.step.bias[-1] = float("-inf")
        got = self.draw(gen).clone()
        want = draw(self.step.logits.float() + self.step.bias, self.noise, *self.values, self.k, self.nucleus)
        self.step.bias.copy_(saved_bias)
        if not torch.equal(got, want) or not torch.equal(self.step.ids, got):
            raise RuntimeError("the replayed draw differs from the eager one")


def graphs_of(model) -> DecodeGraphs:
    return graphed.attached(model, "_decode_graphs", DecodeGraphs)


# ----------------------------------------------------------------------------- the loop


@torch.no_grad()
def generate(model, input_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, seed: Optional[int] = None, eos_token_id: Optional[int] = None,
             vocab_size: Optional[int] = None, allowed_token_ids: Optional[Sequence[int]] = None,
             prefill_chunk: Optional[int] = None, cuda_graph: Optional[bool] = None,
             progress: Optional[Callable[[int], object]] = None):
    """See ``MambaLM.generate``. ``input_ids``: a (b, l) tensor -> (b, l + max_new_tokens) tensor;
    a list of 1-D tensors (any lengths) -> a list of 1-D tensors (each prompt + its new tokens).
    Numbers may be Python or NumPy ones. ``temperature`` must be finite (a huge one samples uniformly
    among the allowed tokens); ``vocab_size`` (None: the model's) lies in [1, padded vocab];
    ``eos_token_id`` must be a token sampling can produce: below ``vocab_size``, or among
    ``allowed_token_ids`` when they are given; seeds lie in [0, ``SEED_MAX``]. ``progress``: called
    with the number of tokens sampled since its last call (over the whole batch), every
    ``PROGRESS_EVERY`` steps and after the last, so its calls add up to b * max_new_tokens."""
    if progress is not None and not callable(progress):
        raise ValueError(f"progress: expected a callable taking a token count, got {type(progress).__name__}")
    padded = model.config.padded_vocab_size
    as_list = not isinstance(input_ids, torch.Tensor)
    if as_list:
        device = next(model.parameters()).device
        prompts = check_prompts(input_ids, padded, device)
    else:
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and input_ids.shape[1] < 1:
            raise ValueError("input_ids: generate needs a prompt of at least one token")
        input_ids = model._check_ids(input_ids)
        device = input_ids.device
        prompts = None
    if not _is_int(max_new_tokens) or operator.index(max_new_tokens) < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    max_new_tokens = operator.index(max_new_tokens)
    if prefill_chunk is not None and (not _is_int(prefill_chunk) or operator.index(prefill_chunk) < 1):
        raise ValueError(f"prefill_chunk: expected a positive int, got {prefill_chunk!r}")
    prefill_chunk = None if prefill_chunk is None else operator.index(prefill_chunk)
    temperature, top_k, top_p = check_sampling(temperature, top_k, top_p)
    check_seed(seed, len(prompts) if as_list else input_ids.shape[0])
    vocab = model.config.vocab_size
    if vocab_size is not None:
        if not _is_int(vocab_size) or not 1 <= operator.index(vocab_size) <= padded:
            raise ValueError(f"vocab_size: expected an int in [1, {padded}] (None: the model's "
                             f"{model.config.vocab_size}), got {vocab_size!r}")
        vocab = operator.index(vocab_size)
    mask = allowed = None
    if allowed_token_ids is not None:
        allowed = check_allowed(allowed_token_ids, padded)
        mask = torch.full((padded,), float("-inf"), device=device)
        mask[allowed] = 0.0
    if eos_token_id is not None:
        eos_token_id = check_eos(eos_token_id, vocab, allowed)
    gen = make_generators(seed, device)

    b = len(prompts) if as_list else input_ids.shape[0]
    new = torch.empty(b, max_new_tokens, dtype=torch.long, device=device)
    if max_new_tokens > 0:
        # inference mode: no version counters or view tracking per op (a 2,048-token prefill of a
        # 24-layer model issues ~500 ops; each is cheaper to launch); ``new`` was made outside it,
        # so the ids returned are ordinary tensors
        graphs = use_cuda_graph(cuda_graph, device)
        with torch.inference_mode():
            if as_list:
                cache, logits = prefill(model, prompts, prefill_chunk, graphs)
            else:
                cache, logits = _prefill_group(model, input_ids, prefill_chunk, graphs)
            graph = graphs_of(model).get(model, b, device) if graphs else None
            if graph is not None:
                graph.load(cache)
                del cache
            _loop(model, graph, cache if graph is None else None, logits, new, temperature, top_k, top_p, gen,
                  eos_token_id, vocab, mask, progress)
    if as_list:
        return [torch.cat([p, new[i]]) for i, p in enumerate(prompts)]
    return torch.cat([input_ids, new.to(input_ids.dtype)], dim=1)


def _loop(model, graph, cache, logits, new, temperature, top_k, top_p, gen, eos_token_id, vocab, mask,
          progress=None):
    """Sample ``new.shape[1]`` tokens into ``new``, stepping eagerly on ``cache`` or by replaying
    ``graph``; ``progress`` hears of them as :func:`generate` says. EOS stays on the device: a
    ``done`` mask turns every later token into EOS. Greedy decoding through a graph takes each token
    from the replay itself (``graph.token``); a sequence that has ended keeps reading its own greedy
    tokens, which its EOS outputs hide, and no other sequence sees them. Sampling through a graph
    draws with its captured sampler, from the same noise as the eager draw (the scores are the padded
    logits plus the same 0 / -inf bias)."""
    b, n = new.shape
    done = torch.zeros(b, dtype=torch.bool, device=new.device) if eos_token_id is not None else None
    width = logits.shape[-1]
    kinds = filters(top_k, top_p, width)
    values = None if greedy(temperature, top_k) else filter_values(temperature, top_p, new.device)
    by_token = graph is not None and values is None
    sampler = None
    if graph is not None and values is not None:
        sampler = graph.sampler(*kinds)
        if sampler is not None:
            sampler.set(temperature, top_p)
    if graph is not None:
        graph.allow(vocab, mask)
    bias = mask
    if bias is None:
        bias = torch.zeros(width, dtype=torch.float32, device=new.device)
        bias[vocab:] = float("-inf")
    told = 0  # tokens ``progress`` has heard of
    for i in range(n):
        if by_token and i > 0:
            nxt = graph.token
        elif sampler is not None:
            if i == 0:
                graph.logits.copy_(logits)  # the prompt's last logits: the replays' logits from here on
            nxt = sampler.draw(gen)
        else:
            scores = logits.float() + bias
            nxt = scores.argmax(-1) if values is None else draw(scores, noise_like(scores, gen), *values, *kinds)
        if done is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done |= nxt == eos_token_id
        new[:, i] = nxt
        if progress is not None and (i + 1) % PROGRESS_EVERY == 0 and i + 1 < n:
            progress(b * PROGRESS_EVERY)
            told += b * PROGRESS_EVERY
        if i + 1 == n:
            break
        if done is not None and (i + 1) % DONE_CHECK_EVERY == 0 and bool(done.all()):
            new[:, i + 1:] = eos_token_id  # every sequence has ended: the rest is EOS anyway
            break
        if graph is None:
            logits = model.step(nxt, cache)
        else:
            if not by_token or i == 0:
                graph.ids.copy_(nxt)
            logits = graph.replay()
    if progress is not None:
        progress(b * n - told)  # the rest, including EOS filled in after every sequence ended
