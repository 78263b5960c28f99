"""Which decode steps the whole-model CUDA kernel takes, decided without a GPU: the reasons it
gives for the models and caches it leaves to the layered step, and its environment switch."""

import pytest
import torch

from genomamba import MambaConfig, MambaLM
from genomamba.ops.cuda import model_step as ms


def why(batch=1, dtype=torch.float32, grad=False, **cfg):
    m = MambaLM(MambaConfig(**{"d_model": 64, "n_layer": 2, "vocab_size": 50, **cfg})).eval().to(dtype)
    ids = torch.zeros(batch, dtype=torch.long)
    with torch.set_grad_enabled(grad):
        return ms.unsupported(m, ids, m.allocate_cache(batch))


def test_a_plain_model_is_taken_but_for_the_device():
    assert why() == "not on CUDA"
    assert why(batch=4, dtype=torch.bfloat16) == "not on CUDA"


@pytest.mark.parametrize("kw, reason", [
    (dict(batch=5), "batch 5"),
    (dict(dtype=torch.float64), "torch.float64 weights"),
    (dict(grad=True), "gradients are on"),
    (dict(rms_norm=False), "LayerNorm"),
    (dict(d_state=12), "d_state 12"),
    (dict(d_model=60), "d_model or d_inner not a multiple of 8"),
])
def test_reasons(kw, reason):
    assert why(**kw).startswith(reason)


def test_batches_of_5_to_64_need_the_tensor_core_switch_and_half_weights(monkeypatch):
    assert why(batch=16, dtype=torch.float16).startswith("batch 16 (1..4; 5..64 with GENOMAMBA_DECODE_MMA=1)")
    monkeypatch.setenv("GENOMAMBA_DECODE_MMA", "1")
    assert ms.kernel_for(4) == "small" and ms.kernel_for(5) == "mma"
    assert why(batch=5, dtype=torch.float16) == "not on CUDA"
    assert why(batch=64, dtype=torch.bfloat16) == "not on CUDA"
    assert why(batch=65, dtype=torch.bfloat16).startswith("batch 65")
    assert why(batch=16) == "torch.float32 weights at batch 16"
    assert why(batch=16, dtype=torch.float16, d_model=48) == "d_model or d_inner not a multiple of 32"
    assert why(batch=4) == "not on CUDA"  # the CUDA-core kernel keeps float32 at 1-4
    monkeypatch.setenv("GENOMAMBA_DECODE_MMA", "yes")
    with pytest.raises(ValueError, match="GENOMAMBA_DECODE_MMA='yes'"):
        ms.mma_enabled()


def test_tensor_core_kernel_shared_memory_fits_the_130m_model_at_batch_64():
    """The 130M shape (d_model 768, d_inner 1536, dt_rank 48, d_state 16) at batch 64 on a 132-SM GPU
    fits in the 227 KB a block may have on an H100/H200; d_model 2048 fits at batch 16, not at 64."""
    h200 = 227 * 1024
    assert ms.mma_shared_bytes(64, 768, 1536, 48, 16, 132) <= h200
    assert ms.mma_shared_bytes(16, 2048, 4096, 128, 16, 132) <= h200
    assert ms.mma_shared_bytes(64, 2048, 4096, 128, 16, 132) > h200
    # more rows of the batch never take less memory
    sizes = [ms.mma_shared_bytes(b, 768, 1536, 48, 16, 132) for b in range(5, 65)]
    assert sizes == sorted(sizes)


def test_forced_backend_and_switch(monkeypatch):
    monkeypatch.setenv("GENOMAMBA_SCAN_BACKEND", "torch")
    assert why() == "the scan backend is forced to torch"
    monkeypatch.delenv("GENOMAMBA_SCAN_BACKEND")
    monkeypatch.setenv("GENOMAMBA_DECODE_STEP", "layers")
    assert not ms.enabled() and why() == "turned off"
    monkeypatch.setenv("GENOMAMBA_DECODE_STEP", "fast")
    with pytest.raises(ValueError, match="GENOMAMBA_DECODE_STEP='fast'"):
        ms.enabled()


def test_cache_of_another_dtype_is_refused():
    m = MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=50)).eval().half()
    with torch.no_grad():
        assert ms.unsupported(m, torch.zeros(2, dtype=torch.long), m.allocate_cache(2, dtype=torch.float32)) \
            == "cache states of another dtype"


def test_cpu_steps_do_not_reach_the_kernel():
    m = MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=50)).eval()
    with torch.no_grad():
        assert ms.model_step(m, torch.zeros(1, dtype=torch.long), m.allocate_cache(1)) is None


def test_layer_table_matches_the_kernel_struct():
    """The address table's columns are the fields of ``struct LayerPtrs``, in its order, and each
    holds the address of the tensor it names (0 for an absent bias)."""
    import re

    from genomamba.ops._sources import csrc_dir

    src = (csrc_dir("model_step") / "common.cuh").read_text()
    body = re.search(r"struct LayerPtrs \{(.*?)\};", src, re.S).group(1)
    fields = tuple(re.findall(r"\*\s*(\w+);", body))
    assert fields == ms.LAYER_FIELDS
    assert f"kLayerFields = {len(fields)};" in src

    m = MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=50, bias=True, conv_bias=False)).eval()
    cache = m.allocate_cache(3)
    buf = ms._Buffers(m, cache, 3, torch.device("cpu"))
    assert buf.table.shape == (2, len(fields))
    mixer = m.backbone.layers[1].mixer
    row = dict(zip(fields, buf.table[1].tolist()))
    assert row["in_b"] == mixer.in_proj.bias.data_ptr() and row["conv_b"] == 0
    assert row["a_log"] == mixer.A_log.data_ptr() and row["ssm_state"] == cache.layers[1].ssm_state.data_ptr()
    # residual (2 rows), mixer output, x, z, y per sequence and the x_proj outputs
    assert buf.workspace.numel() == 3 * (3 * 64 + 3 * 128 + mixer.dt_rank + 2 * 16)


def test_step_kind_says_why_the_layers_ran():
    m = MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=50)).eval()
    cache = m.allocate_cache(1)
    assert ms.step_kind(cache) == "layers (not tried)"
    with torch.no_grad():
        ms._verdict(m, torch.zeros(1, dtype=torch.long), cache)
    assert ms.step_kind(cache) == "layers (not on CUDA)"


def test_float32_a_log_and_d_of_a_half_model_are_taken():
    """A model built in half precision keeps A_log and D in float32: the kernel reads them so."""
    m = MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=50), dtype=torch.float16).eval()
    assert m.backbone.layers[0].mixer.A_log.dtype == torch.float32
    with torch.no_grad():
        assert ms.unsupported(m, torch.zeros(1, dtype=torch.long), m.allocate_cache(1)) == "not on CUDA"
        m.backbone.layers[1].mixer.D.data = m.backbone.layers[1].mixer.D.data.half()
        assert ms.unsupported(m, torch.zeros(1, dtype=torch.long), m.allocate_cache(1)) \
            == "A_log and D of mixed dtypes"


def test_profile_step_says_why_the_kernel_did_not_run():
    m = MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=50)).eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match="not on CUDA"):
        ms.profile_step(m, torch.zeros(1, dtype=torch.long), m.allocate_cache(1))
