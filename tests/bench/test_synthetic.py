"""Paper 4.1 selectivity tasks: data is what it claims, evaluation is length-independent in memory,
and a 2-layer Mamba actually learns induction heads (a short, honest version of the benchmark)."""

from __future__ import annotations

import json

import numpy as np
import torch

from genomamba.bench import synthetic as syn


def test_induction_data():
    rng = np.random.default_rng(0)
    ids, tgt = syn.induction_batch(64, 100, rng)
    assert ids.shape == (64, 100) and tgt.shape == (64,)
    for row, t in zip(ids.numpy(), tgt.numpy()):
        trig = np.flatnonzero(row == syn.INDUCTION_TRIGGER)
        assert len(trig) == 2 and trig[-1] == 99  # one trigger in the body, one query at the end
        assert row[trig[0] + 1] == t and t != syn.INDUCTION_TRIGGER


def test_copying_data():
    rng = np.random.default_rng(0)
    for length in (64, 256, 5000):
        ids, tgt = syn.copying_batch(8, length, rng)
        k = syn.COPY_TOKENS
        assert tgt.shape == (8, k)
        for row, t in zip(ids.numpy(), tgt.numpy()):
            assert (row[-k:] == syn.COPY_MARKER).all()
            body = row[:-k]
            data = body[body != syn.COPY_NOISE]
            assert list(data) == list(t)  # the k tokens, in order, nothing else
            assert set(t) <= set(range(1, syn.VOCAB - 1))


def test_chunked_evaluation_equals_whole():
    m = syn.build_model(d_model=16, seed=0).eval()
    ids, _ = syn.copying_batch(2, 700, np.random.default_rng(1))
    with torch.no_grad():
        whole = m(ids)[:, -syn.COPY_TOKENS:]
    chunked = syn.answer_logits(m, ids, syn.COPY_TOKENS, chunk=96)
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-5)


def test_induction_heads_are_learned():
    """From chance (1/15) to >= 95 % on fresh sequences within a bounded number of steps, and the
    learned mechanism still works at 4x the training length."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is faster, and immune to oversubscription
    try:
        m = syn.build_model(d_model=32, seed=0)
        log = syn.train(m, "induction", steps=STEPS, batch_size=32, length=LENGTH, lr=3e-3, warmup=20, seed=0,
                        target_acc=0.98, patience_batches=3, verbose=False)
    finally:
        torch.set_num_threads(threads)
    assert log["stopped_at"] is not None, f"did not reach 98 % training accuracy in {STEPS} steps: {log}"
    assert syn.evaluate(m, "induction", LENGTH, 128) >= 0.95
    assert syn.evaluate(m, "induction", 4 * LENGTH, 64) >= 0.8


def test_cli_writes_json(tmp_path, capsys):
    assert syn.main(["--steps", "2", "--train-len", "64", "--max-len", "256", "--eval-samples", "4",
                     "--min-eval-samples", "2", "--d-model", "16", "--weight-decay", "0", "--out", str(tmp_path),
                     "--name", "s"]) == 0
    data = json.loads((tmp_path / "s.json").read_text())
    assert set(data["tasks"]) == {"induction", "copying"} and data["config"]["weight_decay"] == 0.0
    assert list(data["tasks"]["induction"]["accuracy"]) == ["64", "128", "256"]
    assert "4x" in data["induction_heads_at"] and "64x" in data["induction_heads_at"]
    assert "induction heads accuracy" in capsys.readouterr().out


STEPS, LENGTH = 600, 32
