"""The one tolerance table for parity tests, keyed by the dtype of the inputs: (rtol, atol)."""

import torch

TOL = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (2e-4, 2e-4),
    torch.float16: (3e-3, 5e-3),
    torch.bfloat16: (3e-2, 5e-2),
}


def assert_close(actual, expected, dtype, what=""):
    """Compare in fp64 with the table's tolerance for ``dtype``; the message names the tensor."""
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol,
                               msg=lambda m: f"{what}: {m}")
