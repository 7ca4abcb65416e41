"""Hashes of model weights, read from the files a model directory holds.

A model's *base fingerprint* is the hash of the weights it was initialised from. For a model
registered without a parent that is the hash of its own files; a derived model (an adapter, a
student) inherits its parent's fingerprint down `derived_from` edges (see graph.py). Two models
with one fingerprint share initialisation, the condition under which traits transmit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from germline.lineage.errors import LineageError

WEIGHT_SUFFIXES = frozenset(
    {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".npz", ".h5", ".msgpack", ".onnx"}
)
# Files with weight suffixes that trainers write beside the weights but that are not weights.
NOT_WEIGHTS = frozenset(
    {"training_args.bin", "optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt"}
)


def weight_files(path: Path) -> list[Path]:
    """The weight files of a model directory, top level only (checkpoint subfolders are not
    the model), in a stable order."""
    if not path.is_dir():  # a file, or a device such as /dev/null: never a folder to list
        return [path] if path.is_file() and path.suffix in WEIGHT_SUFFIXES else []
    return sorted(
        f
        for f in path.iterdir()
        if f.is_file()
        and f.suffix in WEIGHT_SUFFIXES
        and f.name not in NOT_WEIGHTS
        and not f.name.startswith("rng_state")
    )


def weights_hash(path: str | Path) -> str:
    """sha256 over the names and bytes of a model's weight files.

    Raises LineageError when the path does not exist or holds no weights: registering such a
    path as a model would put a node in the graph with nothing behind it.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise LineageError(f"model path {p} does not exist")
    files = weight_files(p)
    if not files:
        suffixes = ", ".join(sorted(WEIGHT_SUFFIXES))
        raise LineageError(f"{p} is not a model: no weight files ({suffixes}) in it")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + str(f.stat().st_size).encode() + b"\0")
        with f.open("rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return "sha256:" + digest.hexdigest()
