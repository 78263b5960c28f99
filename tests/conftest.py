import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton decides at @triton.jit decoration time whether to interpret; set it before any test
    # module (or genomamba.ops.triton, imported by whichever test runs first) imports a kernel.
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Compiled-extension cache shared by all tests (CI sets this too, so a second run reuses builds).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(_ROOT, ".cache", "torch_extensions"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
