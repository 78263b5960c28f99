"""Shared fixtures: the real assets shipped for the adapters (digit clips, a KJV slice, a genome)."""

from pathlib import Path

import pytest
import yaml

ASSETS = Path(__file__).resolve().parents[2] / "genomamba" / "assets"


@pytest.fixture(scope="session")
def adapter_assets() -> dict:
    """The adapters' asset manifest (``genomamba/assets/adapters.yaml``) with resolved paths."""
    doc = yaml.safe_load((ASSETS / "adapters.yaml").read_text())
    for entry in doc["files"]:
        entry["file"] = ASSETS / entry["path"]
    return doc


@pytest.fixture(scope="session")
def digit_clips(adapter_assets) -> list:
    return [e for e in adapter_assets["files"] if e["kind"] == "digit"]


@pytest.fixture(scope="session")
def kjv_asset(adapter_assets) -> Path:
    return next(e["file"] for e in adapter_assets["files"] if e["kind"] == "text")
