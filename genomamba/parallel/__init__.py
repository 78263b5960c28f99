"""Running one model over several processes: context parallelism (one sequence split along its
length over a process group, exact) for training and for inference on very long records."""

from genomamba.parallel.context import (
    ContextParallel,
    ContextParallelError,
    build_context_parallel,
    combine_states,
    context_parallel_scan,
    data_shard,
    halo_exchange,
    init_context_parallel,
    layout,
    slice_bounds,
)
from genomamba.parallel.inference import embed_long, score_long

__all__ = [
    "ContextParallel",
    "ContextParallelError",
    "build_context_parallel",
    "combine_states",
    "context_parallel_scan",
    "data_shard",
    "embed_long",
    "halo_exchange",
    "init_context_parallel",
    "layout",
    "score_long",
    "slice_bounds",
]
