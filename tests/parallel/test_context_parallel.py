"""Context parallelism with real processes (torch.multiprocessing + gloo): the loss and every
parameter gradient of a sequence split over P ranks equal those of the whole sequence in one process.

One spawn of 4 processes runs every case (interpreter start-up dominates): P = 4 (one sequence
group), and P = 2 x 2 data-parallel replicas, each replica on its own rows.
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from tests.parallel import workers

ROWS, LENGTH = 2, 30  # 30 tokens over 4 ranks: slices of 8, 8, 7, 7 (uneven on purpose)
CASES = [(f"p{size}_{dtype}{'_ckpt' if ckpt else ''}", size, dtype, ROWS, LENGTH, ckpt)
         for size in (4, 2) for dtype in ("float64", "float32") for ckpt in (False, True)
         if not (ckpt and dtype == "float32")]
TOL = {"float64": 1e-11, "float32": 2e-5}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("cp")
    mp.spawn(workers.context_parallel_cases, args=(4, str(out / "store"), str(out), CASES), nprocs=4, join=True)
    return out


def _reference(dtype_name: str, replica: int, replicas: int, checkpointing: bool) -> dict:
    model = workers.tiny_model(workers.DTYPES[dtype_name], checkpointing)
    ids = workers.batch(ROWS * replicas, LENGTH)[replica * ROWS:(replica + 1) * ROWS]
    loss = workers.lm_nll(model(ids), ids, 0, LENGTH) / (ROWS * (LENGTH - 1))
    loss.backward()
    return {"loss": loss.detach(), "grads": {n: p.grad for n, p in model.named_parameters()}}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_loss_and_every_gradient_equal_one_process(results, case):
    tag, size, dtype_name, _, _, checkpointing = case
    replicas = 4 // size
    tol = TOL[dtype_name]
    for k in range(replicas):
        got = torch.load(results / f"{tag}_replica{k}.pt")
        want = _reference(dtype_name, k, replicas, checkpointing)
        assert torch.allclose(got["loss"].double(), want["loss"].double(), rtol=tol, atol=0), \
            (float(got["loss"]), float(want["loss"]))
        assert set(got["grads"]) == set(want["grads"])
        for name, g in want["grads"].items():
            scale = float(g.abs().max())
            assert scale > 0, f"{name}: zero gradient, the comparison would prove nothing"
            err = float((got["grads"][name] - g).abs().max()) / scale
            assert err <= tol, f"{tag} replica {k}, {name}: max relative gradient error {err:.2e} (tolerance {tol:.0e})"
