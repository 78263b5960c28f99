"""What the CUDA backend runs: tuning knobs read from the environment, the self-test verdicts, and
the gates that pick among this backend's own kernels (v1/v2 forward, lean and paired builds, CUDA
backward).

Nothing is selected on trust: a kernel runs only if its part of the self-test passed on this GPU
(``STATUS``), unless ``GENOMAMBA_CUDA_UNVERIFIED=1`` (debugging only).
"""

from __future__ import annotations

import functools
import math
import os
import sys

import torch

# self-test outcome per part: True (passed), or a string saying why not; filled when the kernels load
STATUS: dict[str, object] = {"v1": "not built", "v2": "not built", "bwd": "not built", "lean": "not built",
                             "pair": "not built", "chan": "not built", "chan2": "not built", "chan4": "not built",
                             "bwdchan": "not built", "bwdchan2": "not built", "prefetch": "not built"}


def describe(choices) -> str:
    """The values of a knob's ``choices`` (a range or a tuple), as an error message lists them."""
    if isinstance(choices, range):
        return f"{choices.start}..{choices.stop - 1}"
    return ", ".join(str(c) for c in choices)


# the knobs that take only some integers (the others: any integer); an environment variable or a
# bench --knob value outside them is an error that names it, rather than a silent fallback
CHOICES = {
    "npt": (4, 16), "kitems": (8, 16), "kitems_train": (8, 16), "bwd_min_blocks": (1, 2),
    "bwd_joint_scan": (0, 1), "fix_state_exit": (0, 1), "bwd_prefetch": range(-1, 4),
    "bwd_prefetch_fp32": range(-1, 4), "fix_prefetch": range(0, 4), "l2_prefetch": range(0, 3),
    "bc_reduce": (0, 1), "fwd_lean": (-1, 0, 1), "fwd_pair_states": (-1, 0, 1), "fwd_chan": (-1, 0, 1),
    "chan_lanes": (-1, 1, 2, 4), "bwd_chan": (0, 1, 2),
}


def _env_int(name: str, default: int, choices=None) -> int:
    """An integer knob from the environment; ``choices`` (a range or tuple): the values it may take."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r}: expected an integer (default {default})") from None
    if choices is not None and value not in choices:
        raise ValueError(f"environment variable {name}={raw!r}: expected one of {describe(choices)} "
                         f"(default {default})")
    return value


def _env_str(name: str, default: str, choices: tuple) -> str:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ValueError(f"environment variable {name}={raw!r}: expected one of {', '.join(choices)} "
                         f"(default {default})")
    return value


# v1: npt = states per thread (4 or 16), target_threads = threads to aim for when cutting l into
# chunks (defaults: fastest of the v1 variants timed on an H100).
# v2: kitems = tokens per lane (8 or 16; a tile is 32 * kitems tokens), warps = channels per block;
# *_train: the same for forward + backward (the backward needs the forward's tile size, and at
# kitems = 16 it needs ~200 registers, so training runs both at 8 until measured otherwise);
# target_warps = warps to aim for when cutting l into segments (0: as many segments as make whole
# waves of resident warps, see wave_segments);
# min_seg_tokens: shortest segment (the fix-up / summary passes cost up to ~2-3K tokens per
# segment for Mamba's usual delta, so shorter segments would spend a large share on them; of
# 2K/4K/8K/16K, 4K timed fastest over inference and training shapes on an H200: a single 16K
# record then runs in four segments instead of two). Every knob's sweep is in the results
# folder (scan_knobs_nvidia_h200.json).
CONFIG = {
    "variant": _env_str("GENOMAMBA_CUDA_VARIANT", "auto", ("auto", "v1", "v2")),
    "npt": _env_int("GENOMAMBA_CUDA_NPT", 4, CHOICES["npt"]),
    "target_threads": _env_int("GENOMAMBA_CUDA_TARGET_THREADS", 96 * 1024),
    "kitems": _env_int("GENOMAMBA_CUDA_KITEMS", 16, CHOICES["kitems"]),
    "warps": _env_int("GENOMAMBA_CUDA_WARPS", 4),
    "kitems_train": _env_int("GENOMAMBA_CUDA_KITEMS_TRAIN", 8, CHOICES["kitems_train"]),
    "warps_fwd_train": _env_int("GENOMAMBA_CUDA_WARPS_FWD_TRAIN", 4),
    # warps a backward block (channels whose dB/dC it sums before writing partials): 9..16 take the
    # wide build (one 512-thread block per SM at 128 registers; kitems 8 only, 8 otherwise). 16 timed
    # 1.5-2.4 % faster training steps than 8 on an H200 (half the partials), 12 slower
    "warps_bwd": _env_int("GENOMAMBA_CUDA_WARPS_BWD", 16),
    # blocks per SM promised to ptxas for the backward: 2 -> at most 128 registers (16 warps/SM,
    # ~0.1 KB spills at kitems 8), 1 -> ~190 registers, no spills, 8 warps/SM (sm_90 report)
    "bwd_min_blocks": _env_int("GENOMAMBA_CUDA_BWD_MIN_BLOCKS", 2, CHOICES["bwd_min_blocks"]),
    # states whose dB/dC partials the backward sums per pair of block-wide barriers (1: a pair per
    # state; more lets the block's warps drift apart by that many states, at 2 * warps * 32 * kitems
    # floats of shared memory per state; capped by n and by what fits). 4 with the joint scan timed
    # fastest of 1/2/4/8 x 0/1 summed over three training shapes on an H200 (8: one block per SM, slower)
    "bwd_states_per_sync": _env_int("GENOMAMBA_CUDA_BWD_STATES_PER_SYNC", 4),
    # 1: the backward runs its forward (prefix) and reverse (suffix) shuffle scans in the same five
    # rounds per state (shorter dependent chain, same arithmetic); 0: one after the other
    "bwd_joint_scan": _env_int("GENOMAMBA_CUDA_BWD_JOINT_SCAN", 1, CHOICES["bwd_joint_scan"]),
    "target_warps": _env_int("GENOMAMBA_CUDA_TARGET_WARPS", 0),
    "min_seg_tokens": _env_int("GENOMAMBA_CUDA_MIN_SEG_TOKENS", 4096),
    # what the segment rule (wave_segments) charges a segment after the first, in tokens of the
    # main pass: its fix-up (forward) or reverse summary (backward) pass
    "fixup_tokens": _env_int("GENOMAMBA_CUDA_FIXUP_TOKENS", 2048),
    # 1: the fix-up and reverse-summary passes drop each state at the first tile where its own decay
    # factor is below 2^-64 (fast states leave after a few hundred tokens); 0: every state runs to
    # the last tile the slowest one needs (the rule before, kept for same-machine comparisons)
    "fix_state_exit": _env_int("GENOMAMBA_CUDA_FIX_STATE_EXIT", 1, CHOICES["fix_state_exit"]),
    # B/C rows copied into shared memory (asynchronous 16-byte copies, each lane its own runs) this
    # many states ahead of their use. bwd_prefetch: -1 runs the shipped backward; 0..3 its PF build
    # (wide joint blocks at kitems 8: dB/dC slot rows swizzled free of bank conflicts) with a ring
    # that deep, across tile boundaries (0: rows loaded at use). fix_prefetch, 0..3: the fix-up and
    # reverse-summary passes, within a tile (0: loaded at use). Used only if the self-test part
    # "prefetch" passed (else the shipped backward runs). Default 2: on an H200 the PF backward with a
    # two-state ring took (8, 1536, 16, 2048) bf16 fwd+bwd from 1.98 to 1.80 ms, (1, 256, 16, 2^20)
    # from 21.5 to 19.0 ms, and training steps 6-7 % faster (d_model 256 x 8, b4 x 16384 2.06 M ->
    # 2.21 M tokens/s; b32 x 1024 2.07 M -> 2.19 M; d_model 768 x 24, b8 x 2048 217 k -> 230 k); depth
    # 0 (the PF build without a ring) was slower than the shipped build, depths 1-4 even with each
    # other. fix_prefetch 2 was 2 % slower than 0 (scan_prefetch_nvidia_h200.json)
    "bwd_prefetch": _env_int("GENOMAMBA_CUDA_BWD_PREFETCH", 2, CHOICES["bwd_prefetch"]),
    # the same for float32 (and float64) inputs, whose runs are twice as long: a two-state ring takes
    # 96 KB of a wide block's shared memory there, which leaves room for the dB/dC sums of two states
    # per barrier pair instead of four. -1 (the shipped backward): it was faster than rings of depth 1
    # and 2 at (8, 1536, 16, 2048) fp32, timed in one process (scan_defaults_check_nvidia_h100.json)
    "bwd_prefetch_fp32": _env_int("GENOMAMBA_CUDA_BWD_PREFETCH_FP32", -1, CHOICES["bwd_prefetch_fp32"]),
    "fix_prefetch": _env_int("GENOMAMBA_CUDA_FIX_PREFETCH", 0, CHOICES["fix_prefetch"]),
    # 1: L2 prefetch hints for the rows of the tile after next (a warp's own u / delta / dout / z rows
    # and the B / C rows) in the PF builds: the backward's when bwd_prefetch >= 0, the fix-up's and
    # reverse summaries' whenever this is on; 2: in the backward's PF build only (the fix-up and the
    # summaries load as with 0); results are unchanged. Gated like the two above. 1 with bwd_prefetch 2
    # gained ~1 % in training but slowed the forward's fix-up at (1, 1536, 16, 65536) from 1.33 to
    # 1.45 ms (scan_prefetch_nvidia_h200.json); 2 (the default) took 0.7 % off row 1's fwd+bwd and
    # 0.35 % off the 2^20 row's in all three interleaved rounds on an H100, even at l = 65536 and in
    # training steps (scan_levers_nvidia_h100.json, l2_prefetch_ab)
    "l2_prefetch": _env_int("GENOMAMBA_CUDA_L2_PREFETCH", 2, CHOICES["l2_prefetch"]),
    # how the backward's dB/dC partials (one row per block of channels, fp32) become dB and dC:
    # 0 torch's sum over the blocks and then a cast to B's dtype (four kernels, an fp32 (b, g, n, l)
    # pair in between); 1 (default) one kernel that sums them in the same fixed order and writes B's
    # dtype directly (faster in every interleaved round on an H100: scan_levers_nvidia_h100.json,
    # bc_reduce_ab; at 2^20 tokens it is bound by reading the partials, ~2 GB)
    "bc_reduce": _env_int("GENOMAMBA_CUDA_BC_REDUCE", 1, CHOICES["bc_reduce"]),
    "use_cuda_bwd": _env_str("GENOMAMBA_CUDA_BWD", "auto", ("auto", "off")),
    # the lean build of the v2 forward's main pass (fewer instructions per element, same results to
    # rounding; selective_scan_v2.cu, fwd_kernel<..., true>), used only if its self-test passed.
    # -1 (auto): lean except the fp32 inference forward, which timed slower with it on an H200
    # (the bf16 forward and training timed faster);
    # 0: never; 1: always
    "fwd_lean": _env_int("GENOMAMBA_CUDA_FWD_LEAN", -1, CHOICES["fwd_lean"]),
    # the lean forward taking the states two at a time (two independent scan chains per warp;
    # fwd_kernel<..., true, true>), used only where the lean build runs and if its own self-test
    # ("pair") passed: 1 always; 0 never; -1 (auto) in training (saving) forwards only, whose tiles
    # are kitems_train = 8 tokens per lane: there it timed faster on an H200, while at the inference
    # forward's 16 it spills registers and timed slower
    "fwd_pair_states": _env_int("GENOMAMBA_CUDA_FWD_PAIR_STATES", -1, CHOICES["fwd_pair_states"]),
    # the lane-per-channel forward (fwd_chan_kernel: a lane holds all n <= 16 states of one channel
    # and walks the tokens; l cut into segments when b * d is small), used only if its self-test
    # ("chan") passed, the rows are 16-byte aligned and n <= 16: 1 always then; 0 never; -1 (auto)
    # in half-precision training forwards (timed 1.5-2.2x faster than the lane-per-tokens build on
    # an H200) and half-precision inference forwards with b * d >= chan_min_channels or
    # l >= chan_min_len (below both the lane-per-tokens build timed as fast or faster; in fp32 the
    # lane-per-channel build holds 251 registers and timed slower). chan_warps: warps (32 channels
    # each) per block; chan_resident: its warps per SM that the segment rule (wave_segments) fills;
    # chan_min_seg_tokens: its shortest segment; chan_tile32_above: above this many of its warps per
    # SM in a call, the 32-token staging tile (half the shared memory, more blocks per SM) runs
    # instead of the 64-token one (timings: scan_chan_nvidia_h200.json)
    "fwd_chan": _env_int("GENOMAMBA_CUDA_FWD_CHAN", -1, CHOICES["fwd_chan"]),
    "chan_min_channels": _env_int("GENOMAMBA_CUDA_CHAN_MIN_CHANNELS", 8192),
    "chan_min_len": _env_int("GENOMAMBA_CUDA_CHAN_MIN_LEN", 32768),
    "chan_warps": _env_int("GENOMAMBA_CUDA_CHAN_WARPS", 4),
    "chan_resident": _env_int("GENOMAMBA_CUDA_CHAN_RESIDENT", 8),
    "chan_min_seg_tokens": _env_int("GENOMAMBA_CUDA_CHAN_MIN_SEG_TOKENS", 1024),
    "chan_tile32_above": _env_int("GENOMAMBA_CUDA_CHAN_TILE32_ABOVE", 4),
    # auto: not below this many of its warps per SM (after cutting l), where lanes over tokens keep
    # more of the GPU busy; training forwards (which also save the backward's tile states) from 2,
    # inference forwards from 3 (at 2.9, e.g. (8, 1536, 16, 2048), lanes over tokens took 0.456 ms
    # against 0.526; at 3.9 and above the lane-per-channel build timed 1.08-1.54x faster:
    # scan_activations_nvidia_h200.json)
    "chan_min_warps_per_sm": _env_int("GENOMAMBA_CUDA_CHAN_MIN_WARPS_PER_SM", 2),
    "chan_min_warps_per_sm_inference": _env_int("GENOMAMBA_CUDA_CHAN_MIN_WARPS_PER_SM_INFERENCE", 3),
    # lanes per channel of the lane-per-channel forward: 1 (all states in one lane), 2 (8 states each)
    # or 4 (4 states each): two or four times the warps for the same channels. The lanes of a
    # channel share its activations (each computes the softplus and the gate of its own share of the
    # tokens) and reduce-scatter its outputs, so the work per channel stays about that of one lane.
    # Self-tested as parts "chan2" / "chan4". -1 (auto): four lanes for calls of chan_lanes4_min_channels
    # to chan_lanes4_max_channels channels (b * d), one lane outside (above, one lane already gives
    # every scheduler several warps; not timed there): on an H100, four lanes took the
    # (8, 1536, 16, 2048) bf16 forward from 0.475 to 0.258 ms and the d_model 768 x 24, b8 x 2048
    # training step from 189 k to 205 k tokens/s, while one lane stayed faster at b * d = 1536
    # (l = 65536: 1.36 against 1.54 ms) and 2048 (d_model 256, b4 x 16384: 1.95 M against 1.92 M
    # tokens/s) (scan_knobs_nvidia_h100.json, train_knobs_nvidia_h100.json)
    "chan_lanes": _env_int("GENOMAMBA_CUDA_CHAN_LANES", -1, CHOICES["chan_lanes"]),
    "chan_lanes4_min_channels": _env_int("GENOMAMBA_CUDA_CHAN_LANES4_MIN_CHANNELS", 8192),
    "chan_lanes4_max_channels": _env_int("GENOMAMBA_CUDA_CHAN_LANES4_MAX_CHANNELS", 32768),
    # the lane-per-channel backward (bwd_chan_kernel: one lane = one channel with all n <= 16
    # states, reverse carries and dA sums in registers; dB/dC summed over the warp's lanes through
    # shared memory), used only if its self-test part "bwdchan" passed: 1 wherever it applies
    # (n <= 16); 0 (default) never: it executes half the instructions of the lanes-over-tokens
    # backward but holds 255 registers a thread (8 warps per SM at most) and timed 4-8 % slower in
    # fwd+bwd on an H200 (scan_bwd_chan_nvidia_h200.json); 2: two lanes per channel (8 states
    # each: about half the registers and shared memory per channel, twice the warps; self-tested as
    # part "bwdchan2"; slower than both other layouts on every row timed on an H200).
    # bwd_chan_resident: its warps per SM that the segment rule aims for
    "bwd_chan": _env_int("GENOMAMBA_CUDA_BWD_CHAN", 0, CHOICES["bwd_chan"]),
    "bwd_chan_resident": _env_int("GENOMAMBA_CUDA_BWD_CHAN_RESIDENT", 8),
}

_noticed: set[str] = set()


def _unverified_ok() -> bool:
    return os.environ.get("GENOMAMBA_CUDA_UNVERIFIED", "") == "1"


def prefetch_settings(dtype: torch.dtype | None = None) -> tuple[int, int, int]:
    """(main backward -1..3, fix-up and summaries 0..3, L2 hint mode 0..2): the prefetch settings a
    scan of ``dtype`` runs with (the backward's depth is ``bwd_prefetch_fp32``'s for 32- and 64-bit
    floats); (-1, 0, 0), the shipped kernels, unless the self-test part "prefetch" passed."""
    if STATUS.get("prefetch") is not True and not _unverified_ok():
        return -1, 0, 0
    wide = dtype is not None and dtype.itemsize >= 4
    depth = CONFIG["bwd_prefetch_fp32"] if wide else CONFIG["bwd_prefetch"]
    return (max(-1, min(3, int(depth))), max(0, min(3, int(CONFIG["fix_prefetch"]))),
            max(0, min(2, int(CONFIG["l2_prefetch"]))))


def forward_variant() -> str:
    """The forward kernel a call would use now: CONFIG['variant'] if it passed its self-test."""
    want = CONFIG["variant"]
    if want == "auto":
        return "v2" if STATUS["v2"] is True else "v1"
    if want in ("v1", "v2") and (STATUS[want] is True or _unverified_ok()):
        return want
    other = "v1" if want == "v2" else "v2"
    if STATUS.get(other) is True:
        if want not in _noticed:
            _noticed.add(want)
            print(f"genomamba: CUDA variant {want!r} did not pass its self-test; using {other}", file=sys.stderr)
        return other
    raise RuntimeError(f"CUDA variant {want!r} is not verified on this GPU: {STATUS}")


def use_lean(dtype=None, training: bool = False) -> bool:
    """True if the v2 forward runs its lean build for inputs of ``dtype`` (None: any) in a training
    (saving) or inference forward: CONFIG['fwd_lean'] selects it (-1 auto: all but the fp32
    inference forward) and its self-test passed."""
    mode = CONFIG["fwd_lean"]
    if not mode or (mode < 0 and dtype == torch.float32 and not training):
        return False
    return STATUS.get("lean") is True or _unverified_ok()


def fwd_build(dtype=None, training: bool = False) -> int:
    """Which build of the v2 forward's main pass runs for inputs of ``dtype`` in a training (saving)
    or inference forward: 0 plain, 1 lean (``use_lean``), 2 lean with states in pairs
    (CONFIG['fwd_pair_states']: 1, or -1 in a training forward; and its self-test passed)."""
    if not use_lean(dtype, training):
        return 0
    pair = CONFIG["fwd_pair_states"]
    if (pair > 0 or (pair < 0 and training)) and (STATUS.get("pair") is True or _unverified_ok()):
        return 2
    return 1


def _rows_aligned(t: torch.Tensor) -> bool:
    """Every row (all dims but the unit-stride last one) starts on a 16-byte boundary."""
    size = t.element_size()
    return t.data_ptr() % 16 == 0 and all(st * size % 16 == 0 for st in t.stride()[:-1])


def chan_wanted(b: int, d: int, l: int, n: int, dtype, training: bool = False) -> bool:
    """The shape and mode half of :func:`chan_applies` (everything but the alignment of the
    tensors' rows): ``CONFIG['fwd_chan']``, the self-test verdict, n <= 16, and the auto rule (half
    precision; training, or b * d or l large; at least ``chan_min_warps_per_sm`` (training) or
    ``chan_min_warps_per_sm_inference`` of its warps per SM)."""
    mode = CONFIG["fwd_chan"]
    part = CHAN_PARTS[chan_lanes(b, d)]
    if not mode or n > 16 or not (STATUS.get(part) is True or _unverified_ok()):
        return False
    if mode < 0:
        if dtype == torch.float32:
            return False
        if not training and b * d < CONFIG["chan_min_channels"] and l < CONFIG["chan_min_len"]:
            return False
        # too little work to spread (a few channels over a short l): lanes over tokens keep more busy
        kitems = CONFIG["kitems_train"] if training else CONFIG["kitems"]
        least = CONFIG["chan_min_warps_per_sm"] if training else CONFIG["chan_min_warps_per_sm_inference"]
        if _chan_warps(b, d, l, kitems) < least * _sm_count():
            return False
    return True


CHAN_PARTS = {1: "chan", 2: "chan2", 4: "chan4"}  # the self-test part of each lane count


def chan_lanes(b: int | None = None, d: int | None = None) -> int:
    """Lanes per channel of the lane-per-channel forward for a call of b * d channels:
    ``CONFIG["chan_lanes"]`` if 2 or 4; auto (-1): 4 for ``chan_lanes4_min_channels`` to
    ``chan_lanes4_max_channels`` channels if its self-test part passed, else 1 (also when no shape is
    given); any other value: 1."""
    lanes = CONFIG["chan_lanes"]
    if lanes < 0:
        lo, hi = CONFIG["chan_lanes4_min_channels"], CONFIG["chan_lanes4_max_channels"]
        if b is None or d is None or not lo <= b * d <= hi:
            return 1
        return 4 if STATUS.get("chan4") is True or _unverified_ok() else 1
    return lanes if lanes in (2, 4) else 1


def _sm_count() -> int:
    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count


def _chan_warps(b: int, d: int, l: int, kitems: int) -> int:
    """Warps of the lane-per-channel forward for this call (its channels' warps x segments)."""
    tiles, _ = chan_plan(b, d, l, kitems)
    return b * math.ceil(d * chan_lanes(b, d) / 32) * math.ceil(math.ceil(l / (32 * kitems)) / tiles)


def chan_applies(u: torch.Tensor, delta: torch.Tensor, B: torch.Tensor, C: torch.Tensor, z, n: int,
                 training: bool = False) -> bool:
    """True if the forward of this call runs the lane-per-channel build (``CONFIG['fwd_chan']``):
    its self-test passed, n <= 16, every row of u, delta, z, B, C and of the output (l elements)
    16-byte aligned, and (auto) half precision and either a training forward or b * d or l large
    enough (a few channels over a short l: the lane-per-tokens build keeps more lanes busy)."""
    b, d, l = u.shape
    if not chan_wanted(b, d, l, n, u.dtype, training):
        return False
    if (l * u.element_size()) % 16:
        return False
    return all(_rows_aligned(t) for t in (u, delta, B, C) + ((z,) if z is not None else ()))


def bwd_warps(kitems: int) -> int:
    """Warps a block of the backward (lanes over tokens) for a forward of ``kitems`` tokens a lane:
    ``CONFIG["warps_bwd"]``, at most 8 unless kitems is 8 (the wide build's only tile)."""
    warps = CONFIG["warps_bwd"]
    return warps if kitems == 8 else min(warps, 8)


def forward_plan(b: int, d: int, l: int, dtype, training: bool, chan: bool) -> tuple[int, int, int, int]:
    """(tokens per lane, warps per block, tiles per segment, build) of the v2 forward for a call of
    this shape; ``chan``: whether it takes the lane-per-channel build (:func:`chan_applies`)."""
    kitems = CONFIG["kitems_train"] if training else CONFIG["kitems"]
    if chan:
        tiles, build = chan_plan(b, d, l, kitems)
        return kitems, CONFIG["chan_warps"], tiles, build
    warps = CONFIG["warps_fwd_train"] if training else CONFIG["warps"]
    return kitems, warps, seg_tiles(b, d, l, kitems), fwd_build(dtype, training)


def forward_layout(b: int, d: int, n: int, l: int, dtype, training: bool = False) -> str:
    """Which CUDA forward a call of this shape (contiguous inputs) runs, in words, for benchmark
    records: the layout, its build and the number of segments along l."""
    elem = torch.empty((), dtype=dtype).element_size()
    chan = chan_wanted(b, d, l, n, dtype, training) and (l * elem) % 16 == 0
    kitems, _, tiles, build = forward_plan(b, d, l, dtype, training, chan)
    layout = "lane per channel" if chan else "lane per tokens"
    return f"{layout} (build {build}, {math.ceil(max(1, math.ceil(l / (32 * kitems))) / tiles)} segments)"


def chan_plan(b: int, d: int, l: int, kitems: int) -> tuple[int, int]:
    """(tiles per segment, build) of the lane-per-channel forward for this call: segments by
    :func:`wave_segments` (one warp per 32 channels and segment, ``chan_resident`` warps per SM,
    none shorter than ``chan_min_seg_tokens``); build 4 (32-token staging tiles) when the call has
    more than ``chan_tile32_above`` of its warps per SM, else build 3 (64-token tiles); builds 6 and 5
    for two lanes per channel, 8 and 7 for four (``chan_lanes``)."""
    tile = 32 * kitems
    ntiles = max(1, math.ceil(l / tile))
    most = min(max(1, l // max(tile, CONFIG["chan_min_seg_tokens"])), ntiles, 65535)
    sms = _sm_count()
    lanes = chan_lanes(b, d)
    rows = b * math.ceil(d * lanes / 32)
    nseg = wave_segments(rows, ntiles, tile, most, CONFIG["chan_resident"] * sms, CONFIG["fixup_tokens"])
    per = math.ceil(ntiles / nseg)
    warps = rows * math.ceil(ntiles / per)
    build = 4 if warps > CONFIG["chan_tile32_above"] * sms else 3
    return per, build + {1: 0, 2: 2, 4: 4}[lanes]


def cuda_backward_enabled() -> bool:
    """True if gradients go through the CUDA backward (v2 forward and backward both verified)."""
    if CONFIG["use_cuda_bwd"] == "off" or CONFIG["variant"] == "v1":
        return False
    return (STATUS["v2"] is True and STATUS["bwd"] is True) or _unverified_ok()


def bwd_layout(n: int) -> int:
    """The backward layout of a call with n states: 1 (lane per channel) or 2 (two lanes per
    channel) as ``CONFIG['bwd_chan']`` asks, if n <= 16 and that layout's self-test part passed;
    else 0 (lanes over tokens)."""
    mode = CONFIG["bwd_chan"]
    if mode not in (1, 2) or n > 16:
        return 0
    part = "bwdchan" if mode == 1 else "bwdchan2"
    if STATUS.get(part) is not True and not _unverified_ok():
        if part not in _noticed:
            _noticed.add(part)
            why = STATUS.get(part)
            print(f"genomamba: the lane-per-channel CUDA backward ({part}) did not pass its self-test ({why}); "
                  "using the lanes-over-tokens one", file=sys.stderr)
        return 0
    return mode


def bwd_chan_seg_tiles(b: int, d: int, l: int, kitems: int) -> int:
    """Tiles per segment of the lane-per-channel backward: enough segments that its warps (one per
    32 channels, or 16 with two lanes a channel, and segment) reach ``bwd_chan_resident`` per SM,
    none shorter than
    ``chan_min_seg_tokens``."""
    tile = 32 * kitems
    ntiles = max(1, math.ceil(l / tile))
    most = min(max(1, l // max(tile, CONFIG["chan_min_seg_tokens"])), ntiles, 65535)
    rows = b * math.ceil(d * (2 if CONFIG["bwd_chan"] == 2 else 1) / 32)
    nseg = min(most, max(1, math.ceil(CONFIG["bwd_chan_resident"] * _sm_count() / rows)))
    return math.ceil(ntiles / nseg)


def seg_tiles(b: int, d: int, l: int, kitems: int) -> int:
    """Tiles per segment. ``target_warps`` > 0: enough segments that b*d*segments warps reach it.
    0 (default): the segment count that minimises waves x (tokens per segment + fix-up), see
    :func:`wave_segments`. Never a segment shorter than min_seg_tokens."""
    tile = 32 * kitems
    ntiles = max(1, math.ceil(l / tile))
    most = min(max(1, l // max(tile, CONFIG["min_seg_tokens"])), ntiles, 65535)
    target = CONFIG["target_warps"]
    if target > 0:
        nseg = min(max(1, math.ceil(target / max(1, b * d))), most)
    else:
        sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
        nseg = wave_segments(b * d, ntiles, tile, most, RESIDENT_WARPS_PER_SM * sms, CONFIG["fixup_tokens"])
    return math.ceil(ntiles / nseg)


# warps of the scan kernels one SM holds at once (128 registers a thread: 16 warps)
RESIDENT_WARPS_PER_SM = 16


@functools.lru_cache(maxsize=4096)
def wave_segments(rows: int, ntiles: int, tile: int, most: int, resident: int, fixup: int) -> int:
    """Segments for ``rows`` = b*d warps per segment: the count (1..``most``) minimising
    ceil(rows * segments / resident) * (tokens per segment + fixup if segments > 1), the time of
    the waves of warps the GPU runs one after another; ties go to fewer segments. A full wave
    beats a cut into more, shorter segments that spill into a second, mostly idle wave."""
    best, best_cost = 1, None
    limit = min(most, 2 * math.ceil(resident / max(1, rows)) + 1)
    for nseg in range(1, limit + 1):
        per = math.ceil(ntiles / nseg)
        if nseg > 1 and math.ceil(ntiles / per) < nseg:
            continue  # the same cut as fewer segments
        cost = math.ceil(rows * nseg / resident) * (per * tile + (fixup if nseg > 1 else 0))
        if best_cost is None or cost < best_cost:
            best, best_cost = nseg, cost
    return best
