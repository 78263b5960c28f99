"""The DNA adapter is the DNA tokenizer; the registry builds, records and rebuilds every adapter."""

import gzip
import json

import numpy as np
import pytest

from genomamba.adapters import (
    ADAPTER_FILE,
    ADAPTERS,
    Adapter,
    ByteTextAdapter,
    DNAAdapter,
    MuLawAudioAdapter,
    adapter_from_json,
    get_adapter,
)
from genomamba.data.fasta import read_records
from genomamba.data.fetch import assets_dir
from genomamba.tokenizers.dna import DNATokenizer

LAMBDA = assets_dir() / "lambda_virus.fa.gz"


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- DNA
@pytest.mark.parametrize("iupac", ["n", "tokens"])
def test_dna_adapter_ids_equal_the_tokenizer(iupac):
    dna, tok = get_adapter("dna", iupac=iupac), DNATokenizer(iupac=iupac)
    assert isinstance(dna, DNAAdapter) and dna.vocab_size == tok.vocab_size and dna.pad_id == tok.pad_id
    seq = next(iter(read_records(LAMBDA))).sequence
    ids = dna.encode_file(LAMBDA)
    assert ids.dtype == np.uint8 and len(ids) == 48502
    assert np.array_equal(ids, tok.encode(seq))
    assert np.array_equal(dna.encode(seq, add_bos=True), tok.encode(seq, add_bos=True))
    assert dna.decode(ids) == tok.decode(ids) == seq.upper()
    assert dna.specials == {t: tok.token_to_id[t] for t in ("<pad>", "<bos>", "<eos>", "<cls>", "<mask>", "<unk>")}


def test_dna_multi_record_file(tmp_path):
    p = tmp_path / "two.fa.gz"
    p.write_bytes(gzip.compress(b">chrA first\nACGTN\nacgt\n>chrB\nGGCC\n"))
    dna = get_adapter("dna")
    eos = dna.specials["<eos>"]
    assert dna.encode_file(p).tolist() == [6, 7, 8, 9, 10, 6, 7, 8, 9, eos, 8, 8, 7, 7]
    assert dna.decode(dna.encode_file(p)) == "ACGTNACGTGGCC"
    assert dna.encode_file(p, record="chrB").tolist() == [8, 8, 7, 7]
    assert list(dna.encode_records(p)) == ["chrA", "chrB"]
    assert [len(x) for x in dna.read_files([p, p])] == [14, 14]
    with pytest.raises(ValueError, match="no record named 'chrC'; it holds \\['chrA', 'chrB'\\]") as e:
        dna.encode_file(p, record="chrC")
    _one_line(e)


def test_dna_bad_input():
    dna = get_adapter("dna")
    with pytest.raises(ValueError, match="invalid nucleotide character 'E'.*position 2"):
        dna.encode("ACEGT")
    with pytest.raises(ValueError, match="dna.encode: seq must be str, bytes or a uint8 array, got int"):
        dna.encode(7)
    with pytest.raises(ValueError, match="id 11 at position 0, outside \\[0, 11\\)") as e:
        dna.decode([11])
    _one_line(e)


# ----------------------------------------------------------------------------- registry / JSON
def test_registry_names_and_types():
    assert sorted(ADAPTERS) == ["audio", "dna", "text"]
    assert isinstance(get_adapter("text"), ByteTextAdapter)
    assert isinstance(get_adapter("audio"), MuLawAudioAdapter)
    for name, cls in ADAPTERS.items():
        a = get_adapter(name)
        assert isinstance(a, Adapter) and a.name == name and type(a) is cls
        assert 0 <= a.pad_id < a.vocab_size
        assert all(0 <= i < a.vocab_size for i in a.specials.values())


@pytest.mark.parametrize(
    "name, settings",
    [
        ("dna", {}),
        ("dna", {"iupac": "tokens", "unknown": "unk"}),
        ("text", {}),
        ("audio", {}),
        ("audio", {"sample_rate": 22050, "mu": 15, "quality": "VHQ"}),
    ],
)
def test_json_round_trip(name, settings, tmp_path):
    a = get_adapter(name, **settings)
    d = json.loads(a.to_json())
    assert d["type"] == "genomamba.adapter" and d["name"] == name and d["vocab_size"] == a.vocab_size
    assert d["settings"] == a.settings() and all(d["settings"][k] == v for k, v in settings.items())
    for source in (a.to_json(), d):
        b = adapter_from_json(source)
        assert b == a and type(b) is type(a) and b.vocab_size == a.vocab_size and b.settings() == a.settings()
    assert type(a).from_json(a.to_json()) == a
    path = a.save(tmp_path / "model")
    assert path.name == ADAPTER_FILE
    assert adapter_from_json(tmp_path / "model") == a == adapter_from_json(str(path))


def test_registry_errors_are_one_line():
    with pytest.raises(ValueError, match="unknown adapter 'video'; known adapters: \\['audio', 'dna', 'text'\\]") as e:
        get_adapter("video")
    _one_line(e)
    with pytest.raises(ValueError, match="unknown setting 'rate' for the 'audio' adapter; it takes"):
        get_adapter("audio", rate=8000)
    with pytest.raises(ValueError, match="unknown setting 'lowercase' for the 'text' adapter"):
        get_adapter("text", lowercase=True)
    with pytest.raises(ValueError, match="iupac must be one of"):
        get_adapter("dna", iupac="maybe")


def test_from_json_refuses_inconsistent_or_foreign_configs(tmp_path):
    d = get_adapter("audio").to_dict()
    with pytest.raises(ValueError, match="records vocab_size=300 but 'audio' with these settings builds vocab_size=25"):
        adapter_from_json({**d, "vocab_size": 300})
    with pytest.raises(ValueError, match="^adapter config: unknown adapter 'video'"):
        adapter_from_json({**d, "name": "video"})
    with pytest.raises(ValueError, match="unknown setting 'channels'"):
        adapter_from_json({**d, "settings": {"channels": 2}})
    with pytest.raises(ValueError, match="adapter config is for 'audio', not 'text'"):
        ByteTextAdapter.from_dict(d)
    with pytest.raises(ValueError, match="not a genomamba adapter config"):
        ByteTextAdapter.from_dict({"type": "genomamba.DNATokenizer"})
    with pytest.raises(ValueError, match="not valid JSON") as e:
        adapter_from_json("{not json")
    _one_line(e)
    bad = tmp_path / "bad" / "adapter.json"  # read from a file: the messages name it
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad/adapter\.json: not valid JSON"):
        adapter_from_json(bad.parent)
    bad.write_text(json.dumps({**d, "name": "video"}))
    with pytest.raises(ValueError, match=r"bad/adapter\.json: unknown adapter 'video'"):
        adapter_from_json(bad)
    bad.write_bytes(b'{"name": "caf\xe9"}')  # not UTF-8: named, not read in the locale's encoding
    with pytest.raises(ValueError, match=r"bad/adapter\.json"):
        adapter_from_json(bad)
    with pytest.raises(FileNotFoundError, match="no adapter config"):
        adapter_from_json(tmp_path)
