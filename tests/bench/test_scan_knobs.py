"""`genomamba bench scan --device cuda --knob NAME=V1,V2`: the settings it times (no GPU needed)."""

import pytest

from genomamba.bench.scan_gpu import knob_settings, main, schedule
from genomamba.ops.cuda.knobs import CONFIG


def test_every_combination_in_order_with_labels():
    got = knob_settings(["bwd_states_per_sync=1,4", "bwd_min_blocks=2,1"])
    assert [u for u, _ in got] == [
        {"bwd_states_per_sync": 1, "bwd_min_blocks": 2},
        {"bwd_states_per_sync": 1, "bwd_min_blocks": 1},
        {"bwd_states_per_sync": 4, "bwd_min_blocks": 2},
        {"bwd_states_per_sync": 4, "bwd_min_blocks": 1},
    ]
    assert got[2][1] == "cuda[bwd_states_per_sync=4,bwd_min_blocks=2]"
    assert all(set(u) <= set(CONFIG) for u, _ in got)


@pytest.mark.parametrize(
    "spec, says",
    [
        ("no_such_knob=1", "no_such_knob"),
        ("variant=v2", "variant"),  # a string knob is not swept
        ("bwd_states_per_sync", "NAME=V1,V2"),
        ("bwd_states_per_sync=four", "integers"),
        ("bwd_states_per_sync=", "no values"),
        ("bc_reduce=0,2", "bc_reduce takes one of 0, 1, not 2"),  # would have meant torch's sums
        ("bwd_prefetch=-1,4,7", "bwd_prefetch takes one of -1..3, not 4, 7"),
    ],
)
def test_bad_knob_names_the_argument(spec, says):
    with pytest.raises(SystemExit) as e:
        knob_settings([spec])
    assert says in str(e.value) and "--knob" in str(e.value)


def test_rounds_interleave_the_settings():
    settings = knob_settings(["l2_prefetch=0,2"])
    got = schedule(settings, 3)
    assert [(r, u["l2_prefetch"]) for r, u, _ in got] == [(0, 0), (0, 2), (1, 0), (1, 2), (2, 0), (2, 2)]
    assert schedule(settings, 1) == [(0, u, label) for u, label in settings]


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_bad_rounds_is_a_usage_error_before_anything_runs(value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--knob", "l2_prefetch=0,2", "--rounds", value])
    assert e.value.code == 2 and "--rounds" in capsys.readouterr().err


def test_a_knob_row_names_the_layout_its_setting_ran(monkeypatch):
    """The layout columns of a knob row describe the forward under that setting, not the defaults:
    one lane a channel against the shipped four at (8, 1536, 16, 2048)."""
    from types import SimpleNamespace

    import torch

    import genomamba.bench.scan_gpu as sg
    from genomamba.ops.cuda.knobs import STATUS

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(multi_processor_count=132))
    # the timing needs a GPU
    monkeypatch.setattr(sg, "bench_one", lambda be, shape, bw, **kw: {"backend": be, "fwd_ms": 1.0})
    for part in ("v2", "bwd", "chan", "chan4"):
        monkeypatch.setitem(STATUS, part, True)
    shape = (8, 1536, 16, 2048, "bf16")
    shipped = sg.knob_row(shape, 3.0, {}, "cuda")
    one_lane = sg.knob_row(shape, 3.0, {"chan_lanes": 1, "fwd_chan": 1}, "cuda[chan_lanes=1]")
    assert shipped["cuda_training_forward"] == "lane per channel (build 8, 1 segments)"
    assert one_lane["cuda_training_forward"] == "lane per channel (build 3, 1 segments)"
    assert one_lane["backend"] == "cuda[chan_lanes=1]" and CONFIG["chan_lanes"] == -1


@pytest.mark.parametrize("value", ["99", "-1", "0,x", ""])
def test_rows_out_of_the_table_are_a_usage_error(value, capsys):
    """``--rows`` names rows of the table; one past its end was an IndexError on the GPU machine."""
    with pytest.raises(SystemExit) as e:
        main(["--rows", value])
    assert e.value.code == 2 and "--rows" in capsys.readouterr().err
    from genomamba.bench.scan_gpu import ROWS, row_indices

    assert row_indices("all") == list(range(len(ROWS))) and row_indices("0,4") == [0, 4]


@pytest.mark.parametrize("value", ["-1", "x"])
def test_bad_kernel_count_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--kernels", value])
    assert e.value.code == 2 and "--kernels" in capsys.readouterr().err
