"""Tiny real configs for Lightning runs on the shipped genome slices (seconds each on a CPU)."""

import pytest

TINY_MODEL = {"d_model": 32, "n_layer": 2, "d_state": 8, "vocab_size": 11}


def tiny_pretrain_doc(run_dir, max_steps=30, seq_len=256, **trainer):
    return {
        "kind": "pretrain",
        "name": "test_tiny",
        "model": dict(TINY_MODEL),
        "data": {
            "sources": [{"assets": "pretrain", "splits": ["train", "val"]}],
            "seq_len": seq_len,
            "batch_size": 4,
            "train_samples": 10_000,
            "val_windows": 8,
        },
        "optim": {"lr": 5.0e-3, "warmup_steps": 5, "min_lr_ratio": 0.2},
        "trainer": {"max_steps": max_steps, "val_every": max_steps, "log_every": 1, "ckpt_every": 5,
                    "progress": False, "threads": 1, **trainer},
        "test_after_fit": False,
        "run_dir": str(run_dir),
    }


@pytest.fixture
def tiny_pretrain(tmp_path):
    return lambda **kw: tiny_pretrain_doc(tmp_path / "run", **kw)
