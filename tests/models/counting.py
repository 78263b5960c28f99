"""A tiny model trained to count 0, 1, ..., 11, 0, ...: its greedy tokens change at every step, so a
decode step fed a stale or a disallowed token shows in the output. Shared by the CPU and GPU decode tests."""

import torch

from genomamba import MambaConfig, MambaLM


def counting_model() -> MambaLM:
    """Trained on the CPU in about a second; returned in eval mode, on the CPU."""
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=12, d_state=16))
    seq = torch.arange(12).repeat(8)[None]
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    with torch.enable_grad():  # callers may sit under no_grad (the GPU decode tests do)
        _train(m, seq, opt)
    return m.eval()


def _train(m, seq, opt) -> None:
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(m(seq[:, :-1])[0, :, :12], seq[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
