"""``GenomeModel.generate`` and ``AdapterModel.generate``: the prompt comes back exactly as given,
extreme settings still sample the allowed tokens, NumPy numbers are taken, lists of text / audio
prompts work like lists of DNA prompts, and bad settings or seeds are refused naming the argument."""

import numpy as np
import pytest
import torch

from genomamba import MambaConfig, MambaLM
from genomamba.adapters import get_adapter
from genomamba.api import AdapterModel, GenomeModel
from genomamba.errors import InvalidArgument
from genomamba.tokenizers.dna import DNATokenizer


def _lm(vocab_size: int, seed: int = 0) -> MambaLM:
    torch.manual_seed(seed)
    return MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=vocab_size)).eval()


@pytest.fixture(scope="module")
def dna():
    return GenomeModel(_lm(11), DNATokenizer(unknown="unk"))


@pytest.fixture(scope="module")
def text():
    return AdapterModel(_lm(260), get_adapter("text"))


@pytest.fixture(scope="module")
def audio():
    a = get_adapter("audio")
    return AdapterModel(_lm(a.vocab_size), a)


# ----------------------------------------------------------------------------- DNA


def test_include_prompt_returns_the_prompt_exactly_as_given(dna):
    for prompt in ("ACXGT", "acgtRYKMn", "ACGT-?x", b"acgWS"):
        sample = dna.generate(prompt, 5, seed=0)
        out = dna.generate(prompt, 5, seed=0, include_prompt=True)
        given = prompt if isinstance(prompt, str) else prompt.decode("ascii")
        assert out == given + sample and len(out) == len(prompt) + 5
    prompts = ["acXgt", "NNRYacgt", "T"]
    outs = dna.generate(prompts, 4, seed=1, include_prompt=True)
    assert [o[:len(p)] for o, p in zip(outs, prompts)] == prompts
    assert [o[len(p):] for o, p in zip(outs, prompts)] == dna.generate(prompts, 4, seed=1)


@pytest.mark.parametrize("kw", [dict(temperature=2e45), dict(temperature=1e300), dict(top_p=1e-50),
                                dict(temperature=1e300, top_k=2), dict(temperature=1e300, top_p=1e-60)])
@pytest.mark.parametrize("flush_denormal", [False, True])  # training turns flushing on for the process
def test_extreme_settings_still_sample_bases(dna, kw, flush_denormal):
    torch.set_flush_denormal(flush_denormal)
    try:
        out = dna.generate("ACGTACGT", 40, seed=0, **kw)
        assert len(out) == 40 and set(out) <= set("ACGT")
        if kw.get("top_p", 1.0) < 1e-40:  # only the top base stays: greedy decoding
            assert out == dna.generate("ACGTACGT", 40, temperature=0)
    finally:
        torch.set_flush_denormal(False)


def test_a_huge_temperature_samples_the_four_bases_evenly(dna):
    out = "".join(dna.generate(["ACGT"] * 4, 100, temperature=1e300, seed=0))
    assert all(60 <= out.count(b) <= 140 for b in "ACGT"), {b: out.count(b) for b in "ACGT"}  # 100 each, sd 8.7


def test_numpy_numbers_are_taken(dna):
    want = dna.generate("ACGTTG", 12, temperature=0.75, top_k=3, top_p=0.875, seed=2, batch_size=1)
    got = dna.generate("ACGTTG", np.int64(12), temperature=np.float32(0.75), top_k=np.int64(3),
                       top_p=np.float32(0.875), seed=np.int32(2), batch_size=np.int64(1))
    assert got == want


@pytest.mark.parametrize("kw, message", [
    (dict(n=np.float64(3.0)), r"^n: expected an int >= 0"),
    (dict(n=True), r"^n: expected an int >= 0"),
    (dict(temperature="x"), r"^temperature: expected a finite number >= 0"),
    (dict(temperature=float("inf")), r"^temperature: expected a finite number >= 0"),
    (dict(temperature=np.float32("nan")), r"^temperature: expected a finite number >= 0"),
    (dict(top_k=2.5), r"^top_k: expected an int >= 0"),
    (dict(top_k=np.bool_(True)), r"^top_k: expected an int >= 0"),
    (dict(top_p="0.5"), r"^top_p: expected a number in \(0, 1\]"),
    (dict(top_p=np.float32(0.0)), r"^top_p: expected a number in \(0, 1\]"),
    (dict(seed=-1), r"^seed: expected an int in \[0, 4294967295\], got -1"),
    (dict(seed=10**23), r"^seed: expected an int in \[0, 4294967295\]"),
])
def test_bad_settings_are_refused_naming_the_argument(dna, text, kw, message):
    kw = {"n": 3, **kw}
    error = ValueError if "seed" in kw else InvalidArgument  # InvalidArgument is a ValueError
    for model, prompt in ((dna, "ACGT"), (text, "And")):
        with pytest.raises(error, match=message):
            model.generate(prompt, **kw)


def test_every_prompts_seed_must_fit(dna, text):
    top = 2**32 - 1
    assert len(dna.generate("ACGT", 3, seed=top)) == 3
    assert len(dna.generate(["ACGT", "AC"], 3, seed=top - 1)) == 2
    for model, prompts in ((dna, ["ACGT", "AC", "G"]), (text, ["a", "b", "c"])):
        with pytest.raises(ValueError, match=r"^seed: 4294967294 is too large for 3 prompts: prompt i draws from "
                                             r"seed \+ i.*give a seed <= 4294967293"):
            model.generate(prompts, 3, seed=top - 1)


# ----------------------------------------------------------------------------- text and audio


def test_text_lists_of_prompts_are_generated_like_dna_ones(text):
    prompts = ["And", "In the beginning", b"\xc3\xa9t"]
    out = text.generate(prompts, 6, seed=3)
    assert isinstance(out, list) and len(out) == 3 and all(isinstance(o, str) for o in out)
    assert out == [text.generate(p, 6, seed=3 + i) for i, p in enumerate(prompts)]
    assert text.generate(prompts, 6, seed=3, batch_size=2) == out
    greedy = text.generate(prompts, 6, temperature=0)
    assert greedy == [text.generate(p, 6, temperature=0) for p in prompts]
    with pytest.raises(ValueError, match=r"^prompt: empty list"):
        text.generate([], 5)
    with pytest.raises(ValueError, match=r"^prompt\[1\]: empty text"):
        text.generate(["a", ""], 5)
    with pytest.raises(ValueError, match=r"^prompt\[1\]: expected a string"):
        text.generate(["a", 3], 5)
    with pytest.raises(InvalidArgument, match=r"^batch_size: expected a positive int"):
        text.generate(["a"], 5, batch_size=0)


def test_text_include_prompt_keeps_the_prompt_exactly(text):
    for prompt in ("And", "caf\u00e9 ", "a\ud800b"):  # a lone surrogate: no UTF-8 of its own
        sample = text.generate(prompt, 8, seed=1)
        assert text.generate(prompt, 8, seed=1, include_prompt=True) == prompt + sample


def test_text_numpy_numbers_are_taken(text):
    want = text.generate("And", 8, temperature=0.75, top_k=40, top_p=0.875, seed=5)
    assert text.generate("And", np.int64(8), temperature=np.float32(0.75), top_k=np.int64(40),
                         top_p=np.float32(0.875), seed=np.int64(5)) == want


def test_audio_lists_of_prompts(audio):
    waves = [np.zeros(50, np.float32), (0.5 * np.sin(np.arange(30) / 3)).astype(np.float32)]
    out = audio.generate(waves, 10, seed=0, include_prompt=True)
    assert [len(w) for w in out] == [60, 40] and all(w.dtype == np.float32 for w in out)
    assert np.array_equal(out[1], audio.generate(waves[1], 10, seed=1, include_prompt=True))
    assert len(audio.generate(None, np.int64(10), seed=0, include_prompt=True)) == 10


# ----------------------------------------------------------------------------- progress


def test_progress_hears_of_every_token_in_steps_and_changes_nothing(dna, text, monkeypatch):
    """A ``progress`` callback is called every PROGRESS_EVERY steps and after the last, with the tokens
    of the whole batch, adding up to n per prompt over several batches; the samples are the ones
    generated without it."""
    from genomamba.models import decode

    monkeypatch.setattr(decode, "PROGRESS_EVERY", 4)
    prompts = ["ACGT", "GGCATT", "T"]
    calls = []
    out = dna.generate(prompts, 10, seed=5, batch_size=2, progress=calls.append)
    assert out == dna.generate(prompts, 10, seed=5, batch_size=2)
    assert calls == [8, 8, 4, 4, 4, 2]  # batch of two: steps 4 and 8, then the last 2; batch of one
    assert sum(calls) == 10 * len(prompts)
    calls.clear()
    assert text.generate("And", 3, seed=1, progress=calls.append) == text.generate("And", 3, seed=1)
    assert calls == [3]  # fewer steps than PROGRESS_EVERY: one call at the end
    calls.clear()
    dna.generate("ACGT", 0, progress=calls.append)
    assert calls == []  # nothing sampled, nothing to report
    with pytest.raises(ValueError, match=r"^progress: expected a callable"):
        dna.generate("ACGT", 5, progress=5)


def test_progress_adds_up_when_every_sequence_ended_early():
    """With an EOS id the loop stops once every sequence has ended; the rest is EOS and still counts."""
    from genomamba.models import decode

    lm = _lm(11)
    calls = []
    ids = torch.tensor([[1, 2, 3], [3, 2, 1]])
    n = 3 * decode.PROGRESS_EVERY
    out = lm.generate(ids, n, eos_token_id=4, allowed_token_ids=[4], progress=calls.append)
    assert bool((out[:, 3:] == 4).all())  # every sequence ended at its first token...
    assert calls == [2 * n]  # ...so the loop stopped at the first check, and the rest still counts
