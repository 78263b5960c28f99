"""embed / score of one record split over 3 processes (uneven slices, a middle rank) equal the
single-process GenomeModel results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from genomamba.api import GenomeModel
from genomamba.parallel import ContextParallelError, embed_long, score_long
from tests.parallel import workers

SEQ = "".join(np.random.default_rng(3).choice(list("ACGTN"), size=101, p=[0.24, 0.24, 0.24, 0.24, 0.04]))


def test_embed_and_score_over_three_processes_match_one(tmp_path):
    world = 3
    mp.spawn(workers.inference_run, args=(world, str(tmp_path / "store"), str(tmp_path), SEQ), nprocs=world,
             join=True)
    model = GenomeModel(workers.tiny_model(torch.float32).eval())
    per_token = model.embed(SEQ, pooling=None, chunk_size=16)[0]
    want_score = model.score(SEQ, chunk_size=16)
    ranks = [torch.load(tmp_path / f"infer_rank{r}.pt") for r in range(world)]
    for r in ranks:  # the short record: refused on every rank alike, before any exchange
        assert r["short"] is not None and "a record of 7 tokens over 3 ranks: a slice of 2 tokens" in r["short"]
    for pooling in ("mean", "last", "max"):
        want = model.embed(SEQ, pooling=pooling, chunk_size=16)[0]
        for r in ranks:  # every rank holds the whole record's embedding
            np.testing.assert_allclose(r[pooling].numpy(), want, rtol=1e-5, atol=1e-6)
    got_tokens = np.concatenate([r["tokens"].numpy() for r in sorted(ranks, key=lambda r: r["start"])])
    assert [r["start"] for r in ranks] == [0, 34, 68]
    np.testing.assert_allclose(got_tokens, per_token, rtol=1e-5, atol=1e-5)
    for r in ranks:
        s = r["score"]
        assert s["n_scored"] == int(want_score.n_scored[0]) and s["length"] == len(SEQ)
        assert s["log_likelihood"] == pytest.approx(float(want_score.log_likelihood[0]), rel=1e-6)
        assert s["bits_per_base"] == pytest.approx(float(want_score.bits_per_base[0]), rel=1e-6)


def test_one_process_started_like_torchrun(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(workers.single_process_run, args=(port, str(tmp_path), SEQ), nprocs=1, join=True)
    got = torch.load(tmp_path / "single.pt")
    assert got["size"] == 1 and got["device"] == "cpu"
    model = GenomeModel(workers.tiny_model(torch.float32).eval())
    np.testing.assert_allclose(got["mean"].numpy(), model.embed(SEQ)[0], rtol=1e-5, atol=1e-6)


def test_one_process_without_a_group_and_refusals():
    model = GenomeModel(workers.tiny_model(torch.float32).eval())
    np.testing.assert_allclose(embed_long(model, SEQ, None), model.embed(SEQ)[0], rtol=1e-5, atol=1e-6)
    assert score_long(model, SEQ, None)["n_scored"] == int(model.score(SEQ).n_scored[0])
    with pytest.raises(ValueError, match="pooling"):
        embed_long(model, SEQ, None, pooling="median")
    with pytest.raises(ValueError, match="GenomeModel"):
        embed_long(model.lm, SEQ, None)
    from genomamba.parallel import ContextParallel

    fake = ContextParallel(group=None, rank=0, size=4, ranks=(0, 1, 2, 3), dp_rank=0, dp_size=1)
    with pytest.raises(ContextParallelError, match="halo"):
        embed_long(model, "ACGTACG", fake)
