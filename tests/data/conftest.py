"""Real-genome fixtures: fetched once per machine into $GENOMAMBA_DATA (default ~/.cache/genomamba).

A failed fetch fails the test with FetchError's message (what broke, how to fix it). Only
GENOMAMBA_OFFLINE=1 turns these tests into skips, for machines that cannot reach Debian's archive.
"""

import os

import pytest


def _offline() -> bool:
    return os.environ.get("GENOMAMBA_OFFLINE", "") not in ("", "0")


@pytest.fixture(scope="session")
def real_data():
    """``real_data(name) -> Path`` of a fetched dataset folder (bacteria, umaydis, fly, lambda, ...)."""
    from genomamba.data.fetch import fetch

    cache = {}

    def get(name: str):
        if _offline():
            pytest.skip("GENOMAMBA_OFFLINE=1: real-genome tests skipped")
        if name not in cache:
            cache[name] = fetch(name, quiet=True)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def umaydis_store(real_data, tmp_path_factory):
    from genomamba.data.store import TokenStore

    src = real_data("umaydis") / "Umaydis.fasta.gz"
    return TokenStore.build([src], tmp_path_factory.mktemp("store") / "umaydis.h5")


@pytest.fixture(scope="session")
def assets_manifest():
    from genomamba.data.fetch import default_assets

    return default_assets()
