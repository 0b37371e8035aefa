"""Checkpoint files: one .npz holding the config, the flat buffers and the counters, written atomically.

The file is written to a temporary name in the same directory, flushed to disk, then renamed over the
target: a crash mid-write leaves the previous checkpoint intact, never a half-written one.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "fastbp-checkpoint"
VERSION = 1


def write(path, arrays, meta):
    """arrays: name -> ndarray; meta: JSON-serialisable dict (config, counters, RNG state)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot save {path}: directory {directory} does not exist")
    header = {"format": FORMAT, "version": VERSION, **meta}
    fd, tmp = tempfile.mkstemp(prefix=".fastbp-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(header)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read(path):
    """Returns (arrays, meta); ValueError if the file is not a readable fastbp checkpoint."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path} is not a readable fastbp checkpoint: {exc}") from None
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (KeyError, json.JSONDecodeError):
        raise ValueError(f"{path} is not a fastbp checkpoint (no readable metadata)") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fastbp checkpoint")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path} is checkpoint version {meta.get('version')}; this fastbp reads {VERSION}")
    return arrays, meta
