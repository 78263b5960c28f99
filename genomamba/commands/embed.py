"""``genomamba embed MODEL_DIR genome.fa -o genome.h5 [--pooling mean|last|max|none]``

Every FASTA record becomes one HDF5 dataset: a pooled ``(d_model,)`` vector or per-token
``(length, d_model)`` embeddings, written atomically. Exit codes: 0 success, 1 bad input or model
(the message names the file / record / argument), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
import torch

from genomamba.commands.common import add_model_args, fail, load_model, model_files, positive_int
from genomamba.errors import UserError, check_input_file
from genomamba.files import atomic_path, check_output

EMBED_FORMAT = "genomamba.embeddings/1"


def hdf5_name(record_name: str) -> str:
    """A record name as an HDF5 dataset name: ``/`` would make groups and ``.`` names the group
    itself, so ``%`` and ``/`` are percent-encoded and a name of only dots gets a ``%2E``
    prefix. The original name is kept in the dataset's ``name`` attribute (and is recovered by
    ``urllib.parse.unquote``)."""
    out = record_name.replace("%", "%25").replace("/", "%2F")
    if out == "" or set(out) == {"."}:
        out = "%2E" + out[1:] if out else "%00"
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genomamba embed",
        description="Embed every record of a FASTA file with a trained model into an HDF5 file: one "
                    "dataset per record, (d_model,) pooled or (length, d_model) per token. Sequences "
                    "of any length run in chunks with the recurrent state carried (bounded memory); "
                    "the output is written to a temporary file and renamed at the end, so a failed "
                    "run never leaves a partial file.")
    add_model_args(p)
    p.add_argument("fasta", help="FASTA file (plain, gzip, bgzip, xz)")
    p.add_argument("-o", "--output", required=True, help="output .h5 file")
    p.add_argument("--pooling", choices=("mean", "last", "max", "none"), default="mean",
                   help="mean/last/max -> one (d_model,) vector per record; none -> per-token (l, d_model)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=16384, help="tokens per forward pass")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored dtype")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    return p


def embed_fasta(model, fasta, output, pooling: Optional[str] = "mean", batch_size: int = 8,
                chunk_size: int = 16384, dtype: str = "float32", quiet: bool = True, replace: bool = True) -> dict:
    """FASTA -> HDF5 (atomically). Per-token output streams chunk by chunk into the dataset, so
    memory stays bounded however long a record is. Returns a summary dict. ``replace=False``: an
    ``output`` that exists when the file is committed is kept and ``OutputExistsError`` raised."""
    output = Path(output)
    fasta = Path(fasta)
    np_dtype = np.dtype(dtype)
    summary = {"records": 0, "bases": 0}
    t0 = time.time()

    def add(h5, name, arr_or_shape, length, description=None):
        key = hdf5_name(name)
        if key in h5:
            raise ValueError(f"fasta: duplicate record name {name!r}")
        if isinstance(arr_or_shape, tuple):
            ds = h5.create_dataset(key, shape=arr_or_shape, dtype=np_dtype,
                                   chunks=(min(arr_or_shape[0], 4096), arr_or_shape[1]))
        else:
            ds = h5.create_dataset(key, data=arr_or_shape.astype(np_dtype))
        ds.attrs["name"] = name
        ds.attrs["length"] = length
        ds.attrs["index"] = summary["records"]  # the record's place in the input (0-based)
        summary["records"] += 1
        summary["bases"] += length
        if not quiet:
            print(f"  {name}: {length:,} {unit}{'s' if length != 1 else ''}", file=sys.stderr)
        return ds

    # A text or audio model embeds the file itself (one record: its bytes or its samples).
    modal = hasattr(model, "adapter")
    unit = getattr(model.adapter, "unit", "token") if modal else "base"
    summary["unit"] = unit  # "bases" counts tokens of this unit (bases, bytes or samples)
    source = Path(fasta) if modal else fasta

    def records():
        return model._iter_inputs(source, "fasta")

    def size(i, name, s):
        return len(model.encode(s, where=f"fasta: record {i + 1} ({name!r})")) if modal else len(s)

    def fill(h5):
        h5.attrs["format"] = EMBED_FORMAT
        h5.attrs["model"] = str(model.path) if model.path else ""
        h5.attrs["pooling"] = pooling or "none"
        h5.attrs["d_model"] = model.d_model
        h5.attrs["source"] = str(fasta)
        if getattr(model, "classifier", None) is not None:  # a spectral front end: embed what its backbone reads
            for name, arr, n in model._embed_clips(source, pooling, np.float32, "fasta"):
                add(h5, name, arr, n)
        elif pooling is not None:  # one pass over the file: the length is what the model read, less <bos>
            bos = 1 if not modal and model.add_bos else 0
            for name, vec, n in model._embedded(source, pooling, batch_size, chunk_size, np.float32, "fasta"):
                add(h5, name, vec, n - bos)
        else:
            for i, (name, s) in enumerate(records()):
                ids = model.encode(s, where=f"fasta: record {i + 1} ({name!r})")
                ds = add(h5, name, (len(ids), model.d_model), size(i, name, s))
                with torch.no_grad():
                    for start, h in model._chunks([ids], chunk_size):
                        ds[start:start + h.shape[1]] = h[0].float().cpu().numpy().astype(np_dtype)
        h5.attrs["n_records"] = summary["records"]

    # links kept in creation order: iterating the file gives the records in input order
    with atomic_path(output, replace=replace) as tmp, h5py.File(tmp, "w", track_order=True) as h5:
        fill(h5)
    summary["seconds"] = round(time.time() - t0, 2)
    summary["output"] = str(output)
    return summary


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    out = Path(args.output)
    try:
        check_input_file(args.fasta, "fasta")
        check_output(out, [args.fasta, *model_files(args.model)], "--output", args.force)
        positive_int("--batch-size", args.batch_size)
        positive_int("--chunk-size", args.chunk_size)
        model = load_model(args)
        s = embed_fasta(model, args.fasta, out, None if args.pooling == "none" else args.pooling,
                        args.batch_size, args.chunk_size, args.dtype, quiet=False, replace=args.force)
    except (UserError, ValueError, OSError) as exc:
        return fail("embed", exc)
    units = f"{s['unit']}{'s' if s['bases'] != 1 else ''}"
    records = f"{s['records']} record{'s' if s['records'] != 1 else ''}"
    print(f"embedded {records} ({s['bases']:,} {units}) in {s['seconds']}s -> {s['output']}")
    return 0
