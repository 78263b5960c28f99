import os

import pytest
import torch

# Compiled-extension cache shared by all tests (CI sets this too, so a second run reuses builds).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(_ROOT, ".cache", "torch_extensions"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
