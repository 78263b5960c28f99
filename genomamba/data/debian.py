"""Programs and data from Debian packages without installing them: ``apt-get download`` + ``dpkg -x``.

``unpack(packages, root)`` fetches the named packages (and, with ``with_deps``, every dependency
that is not installed on this machine) into ``root/debs`` and unpacks them under ``root/fs``.
``Toolbox`` then runs the unpacked binaries with ``LD_LIBRARY_PATH`` pointing into ``root/fs``, and
``check()`` runs ``ldd`` first so that a missing shared library is reported by name rather than as a
crash of the program. No root rights are needed (except for refreshing empty apt package lists).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Optional, Union

from genomamba.data.fasta import file_sha256

PathLike = Union[str, os.PathLike]

_DONE = ".unpacked.json"
MARKER = ".genomamba-fetch.json"  # a generated dataset's record of its files and their SHA-256


class DebianError(RuntimeError):
    """apt-get / dpkg failed or an unpacked program cannot run; the message says which and why."""


def run(cmd: list, what: str, cwd: Optional[Path] = None, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run ``cmd``; DebianError (naming ``what`` and the tail of stderr) if it fails or is missing."""
    try:
        res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise DebianError(
            f"{what}: `{cmd[0]}` not found (a Debian/Ubuntu system with apt-get and dpkg is needed)"
        ) from None
    if res.returncode != 0:
        err = res.stderr.decode("utf-8", "replace").strip()[-1500:]
        raise DebianError(f"{what} failed (exit {res.returncode}): {' '.join(map(str, cmd))}: {err}")
    return res


def is_installed(package: str) -> bool:
    """True when dpkg lists ``package`` as installed on this machine."""
    try:
        res = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package], capture_output=True, text=True)
    except FileNotFoundError:
        return False
    return res.returncode == 0 and res.stdout.startswith("ii")


def dependency_closure(packages: Iterable[str]) -> list:
    """The packages plus everything they depend on, recursively (Depends only), sorted."""
    cmd = [
        "apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
        "--no-breaks", "--no-replaces", "--no-enhances", *packages,
    ]  # fmt: skip
    out = run(cmd, "apt-cache depends").stdout.decode()
    # Top-level lines are package names; indented lines are relations; <name> is a virtual package.
    names = {ln.strip() for ln in out.splitlines() if ln and not ln[0].isspace() and not ln.startswith("<")}
    return sorted(names | set(packages))


def package_version(deb: Path) -> str:
    return run(["dpkg-deb", "-f", deb, "Version"], f"reading {deb.name}").stdout.decode().strip()


def unpack(packages: list, root: PathLike, with_deps: bool = True, quiet: bool = False,
           top_up: bool = False) -> dict:
    """Download and unpack ``packages`` under ``root/fs``; returns ``{package: version}``.

    With ``with_deps``, dependencies not installed here are unpacked too. A finished unpack is
    recorded in ``root`` and reused by the next call with the same packages. A folder unpacked on
    another machine (a shared data directory) skipped the dependencies installed *there*; with
    ``top_up`` the dependencies that are neither installed here nor unpacked yet are added.
    """
    root = Path(root)
    done = root / _DONE
    rec = json.loads(done.read_text()) if done.exists() else {"requested": [], "versions": {}}
    if set(packages) <= set(rec["requested"]) and not top_up:
        return rec["versions"]
    have = set(rec["versions"]) if top_up else set()
    want = [p for p in packages if p not in have]
    if with_deps:
        want += [p for p in dependency_closure(packages)
                 if p not in packages and p not in have and not is_installed(p)]
    versions = dict(rec["versions"])
    if want:
        versions.update(_download_and_unpack(sorted(set(want)), root, quiet))
    requested = sorted(set(packages) | set(rec["requested"]))
    done.write_text(json.dumps({"requested": requested, "versions": versions}, indent=1))
    return versions


def _download_and_unpack(packages: list, root: Path, quiet: bool) -> dict:
    debs_dir, fs = root / "debs", root / "fs"
    if debs_dir.exists():
        shutil.rmtree(debs_dir)
    debs_dir.mkdir(parents=True)
    fs.mkdir(parents=True, exist_ok=True)
    download(packages, debs_dir, quiet)
    versions = {}
    for deb in sorted(debs_dir.glob("*.deb")):
        run(["dpkg", "-x", deb, fs], f"unpacking {deb.name}")
        versions[deb.name.split("_")[0]] = package_version(deb)
    shutil.rmtree(debs_dir)
    if not quiet:
        print(f"unpacked {len(versions)} Debian packages into {fs}", file=sys.stderr)
    return versions


def unpacked_programs(names: list, packages: list, root: PathLike, quiet: bool = False) -> tuple:
    """Unpack ``packages`` under ``root`` and locate the programs ``names`` there, each able to load
    its shared libraries: ``(Toolbox, {name: path}, {package: version})``. When a program misses a
    library (the folder was unpacked on a machine that had it installed), the dependencies this
    machine lacks are added once; a library still missing then raises DebianError naming it."""
    versions = unpack(packages, root, quiet=quiet)
    toolbox = Toolbox(Path(root) / "fs")
    missing = {n: libs for n in names if (libs := toolbox.missing_libraries(n))}
    if missing:
        try:
            versions = unpack(packages, root, quiet=quiet, top_up=True)
        except DebianError as e:
            needs = "; ".join(f"{n} needs {', '.join(libs)}" for n, libs in missing.items())
            raise DebianError(
                f"the programs unpacked under {Path(root) / 'fs'} cannot run on this machine: {needs}, which "
                f"neither this machine nor that folder has, and adding their packages failed ({e}). Install the "
                f"libraries with apt-get, or unpack their Debian packages into that folder (dpkg -x PKG.deb "
                f"{Path(root) / 'fs'})") from None
        toolbox = Toolbox(Path(root) / "fs")
    return toolbox, {n: toolbox.check(n) for n in names}, versions


def download(packages: list, where: Path, quiet: bool = False) -> None:
    """``apt-get download`` into ``where``; refreshes empty package lists once when run as root."""
    cmd = ["apt-get", "download", *packages]
    try:
        run(cmd, "apt-get download", cwd=where)
    except DebianError as e:
        stale = ("Unable to locate", "no installation candidate", "404", "Failed to fetch")
        if not any(x in str(e) for x in stale):
            raise
        if hasattr(os, "geteuid") and os.geteuid() != 0:
            raise DebianError(f"{e} (the apt package lists look empty: run `sudo apt-get update` once)") from None
        if not quiet:
            print("apt package lists are empty; running apt-get update once", file=sys.stderr)
        run(["apt-get", "update"], "apt-get update")
        run(cmd, "apt-get download", cwd=where)
    got = {d.name.split("_")[0] for d in where.glob("*.deb")}
    missing = sorted(set(packages) - got)
    if missing:
        raise DebianError(f"apt-get download produced no .deb for {missing}")


class Toolbox:
    """Runs programs unpacked under ``fs`` (``fs/usr/bin/NAME``) with their libraries found."""

    def __init__(self, fs: PathLike):
        self.fs = Path(fs)
        libdirs = sorted({str(p.parent) for p in self.fs.glob("**/*.so*") if p.is_file() or p.is_symlink()})
        self.env = dict(os.environ)
        old = self.env.get("LD_LIBRARY_PATH", "")
        self.env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs + ([old] if old else []))

    def binary(self, name: str) -> Path:
        for sub in ("usr/bin", "usr/games", "bin", "usr/sbin"):
            p = self.fs / sub / name
            if p.is_file():
                return p
        raise DebianError(f"{name}: not found under {self.fs} (was its package unpacked?)")

    def missing_libraries(self, name: str) -> list:
        """The shared libraries ``ldd`` cannot find for the binary (empty without ``ldd``)."""
        try:
            res = subprocess.run(["ldd", str(self.binary(name))], env=self.env, capture_output=True, text=True)
        except FileNotFoundError:
            return []  # no ldd: the first real run reports a missing library instead
        return sorted({ln.split()[0] for ln in res.stdout.splitlines() if "not found" in ln})

    def check(self, name: str) -> Path:
        """Path of the binary; DebianError naming any shared library it cannot find."""
        exe = self.binary(name)
        missing = self.missing_libraries(name)
        if missing:
            raise DebianError(f"{exe} cannot find shared libraries {missing}; install the program with apt-get instead")
        return exe


def write_marker(out: Path, dataset: str, files: dict) -> None:
    """Record a finished generated dataset: ``files`` maps each path (relative to ``out``) to its SHA-256."""
    (Path(out) / MARKER).write_text(json.dumps({"dataset": dataset, "files": files}, indent=0))


def dataset_complete(out: Path, verify: bool) -> bool:
    """True if ``out`` holds a finished generated dataset: every recorded file present (and, with
    ``verify``, unchanged)."""
    marker = Path(out) / MARKER
    if not marker.exists():
        return False
    files = json.loads(marker.read_text()).get("files", {})
    for rel, sha in files.items():
        p = Path(out) / rel
        if not p.exists() or (verify and file_sha256(p) != sha):
            return False
    return bool(files)
