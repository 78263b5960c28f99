"""Plain-text corpora for the byte-level text adapter, from Debian packages.

``fetch_text(out)`` writes:

- ``kjv.txt``: the King James Bible (packages bible-kjv, bible-kjv-text), Genesis 1:1 to
  Revelation 22:21 as the package's own ``bible`` program prints it: a heading per chapter, one
  verse per line, ASCII.
- ``jargon.txt``: the Jargon File 4.4.7 (package jargon-text), decompressed, UTF-8.
- ``provenance.json``: package versions, the files read from each package and their sha256, the
  command that rendered the Bible, and the sha256 / size / line count of every output.

The package files and the outputs are checked against pinned sha256 values; a changed package
fails loudly unless ``verify=False``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Union

from genomamba.data.debian import DebianError, Toolbox, dataset_complete, run, unpack, write_marker

PathLike = Union[str, os.PathLike]

PROVENANCE = "provenance.json"
BIBLE_SPEC = "gen1:1-rev22:21"
# sha256 of the package members read, and of the outputs written (Debian bookworm versions:
# bible-kjv / bible-kjv-text 4.38, jargon-text 4.4.7-4.1).
MEMBERS = {
    "bible-kjv-text": {
        "usr/lib/bible.data": "6c746c2acc8a34bfded980883ff1701a5d68934a1c853ebf88a07b978fe0ae0e",
        "usr/lib/bible.data.conc": "56349cd5a86be64d91eee62ac050114b89485f13b439ad4f34da99dde3b4dff3",
    },
    "jargon-text": {
        "usr/share/doc/jargon-text/jargon.txt.gz": "fcaa76e4c2ebdf90c6557524b9430373dc49d1a26462ef30f43c0ace70a25a3a",
    },
}
OUTPUTS = {
    "kjv.txt": "6f74f5589333c56c263963e6347dba662bae2d96861302e690aaae0b4a855eda",
    "jargon.txt": "40dfb4b98191a670a09a183d5798d50f243d23fdbd1495dcc0aca2ce5895ba97",
}
PACKAGES = ["bible-kjv", "bible-kjv-text", "jargon-text"]


def fetch_text(out: PathLike, verify: bool = True, quiet: bool = False) -> Path:
    """KJV and Jargon File as plain text in ``out`` (reused when complete); returns ``out``."""
    out = Path(out)
    if dataset_complete(out, verify):
        return out
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="genomamba-text-") as tmp:
        versions = unpack(PACKAGES, Path(tmp), with_deps=True, quiet=True)
        fs = Path(tmp) / "fs"
        members = {}
        for package, files in MEMBERS.items():
            for member, sha in files.items():
                got = _sha256((fs / member).read_bytes()) if (fs / member).exists() else None
                if got is None:
                    raise DebianError(f"{package}: {member} not in the package (package layout changed?)")
                if verify and got != sha:
                    raise DebianError(
                        f"{package}: {member}: sha256 {got} != expected {sha} (package updated?); "
                        "rerun with --no-verify to accept it"
                    )
                members[member] = {"package": package, "version": versions.get(package, ""), "sha256": got}
        box = Toolbox(fs)
        bible = box.check("bible")
        # -l100000: a line width no verse reaches, so each verse is one line whatever $COLUMNS says.
        cmd = [bible, "-p", fs / "usr/lib", "-m", "8192", "-l100000", BIBLE_SPEC]
        kjv = run(cmd, "bible (rendering the KJV)", env=box.env).stdout
        jargon = gzip.decompress((fs / "usr/share/doc/jargon-text/jargon.txt.gz").read_bytes())
    outputs = {}
    for name, data in (("kjv.txt", kjv), ("jargon.txt", jargon)):
        sha = _sha256(data)
        if verify and sha != OUTPUTS[name]:
            raise DebianError(f"{name}: sha256 {sha} != expected {OUTPUTS[name]}; rerun with --no-verify to accept it")
        (out / name).write_bytes(data)
        outputs[name] = {"sha256": sha, "bytes": len(data), "lines": data.count(b"\n")}
    outputs["kjv.txt"]["source"] = {
        "packages": ["bible-kjv", "bible-kjv-text"],
        "command": f"bible -p usr/lib -m 8192 -l100000 {BIBLE_SPEC}",
        "verses": sum(1 for ln in kjv.splitlines() if ln[:1] == b" " and ln.strip()[:1].isdigit()),
    }
    outputs["jargon.txt"]["source"] = {"packages": ["jargon-text"], "command": "gunzip jargon.txt.gz"}
    prov = {
        "dataset": "text",
        "description": "plain-text corpora from Debian packages for the byte-level text adapter",
        "packages": {p: versions.get(p, "") for p in PACKAGES},
        "members": members,
        "outputs": outputs,
    }
    (out / PROVENANCE).write_text(json.dumps(prov, indent=1) + "\n")
    write_marker(out, "text", {k: v["sha256"] for k, v in outputs.items()})
    if not quiet:
        sizes = ", ".join(f"{k} {v['bytes']:,} bytes" for k, v in outputs.items())
        print(f"fetched text: {sizes} into {out} in {time.time() - t0:.1f}s", file=sys.stderr)
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
