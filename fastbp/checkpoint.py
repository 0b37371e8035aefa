"""Checkpoint files: one .npz holding the config, the flat buffers and the counters, written atomically.

The file is written to a temporary name in the same directory, flushed to disk, then renamed over the
target: a crash mid-write leaves the previous checkpoint intact, never a half-written one, and a Ctrl-C
during the write takes effect once the file is complete. A temporary file left by a process killed
mid-write is removed by the next save of the same target on the same host. The new file gets the permissions a plain
open() would give it (0666 less the umask), like np.savez's.

Reading trusts nothing in the file: the metadata is size-limited JSON that must be an object, and every
array's .npy header is checked (dtype float32, the length the metadata's config implies) before any
memory is allocated for it. Anything else is a ValueError saying what is wrong; nothing is ever
unpickled.
"""
import contextlib
import json
import os
import socket
import stat
import tempfile
import zipfile

import numpy as np

from .guard import whole_steps

FORMAT = "fastbp-checkpoint"
VERSION = 1
ARRAYS = ("params", "moment1", "moment2")
MAX_META_BYTES = 1 << 20  # the real metadata is a few KB


def _umask():
    """The process's umask, read without changing it (os.umask would race with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _check_writable(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise IsADirectoryError(f"cannot save to {path}: it is not a regular file")
    # os.access alone is not enough: it always says yes to root, who would replace a file anyone protected.
    if not os.access(path, os.W_OK) or not st.st_mode & 0o222:
        raise PermissionError(f"cannot save to {path}: the file is read-only")


def _temporary_prefix(path, host=None, pid=None):
    """Temporary files name their target, host and process: `.model.npz.fastbp-HOST-PID-`."""
    host = socket.gethostname() if host is None else host
    pid = os.getpid() if pid is None else pid
    return f".{os.path.basename(path)}.fastbp-{host}-{pid}-"


def _remove_orphans(directory, target):
    """Deletes temporary files that an earlier save of `target` on this host left when its process was
    killed mid-write (SIGKILL, power loss: nothing could clean up). A file whose process still runs is
    another save in progress, and files of other hosts (a shared filesystem) are left alone."""
    mine = f".{target}.fastbp-{socket.gethostname()}-"
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(mine) and name.endswith(".tmp")):
            continue
        try:
            pid = int(name[len(mine):].split("-")[0])
            os.kill(pid, 0)  # raises if no such process
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
        except (ValueError, PermissionError, OSError):
            continue  # not our naming, or a live process of another user


def write_atomically(path, write_to):
    """Writes a file at path through write_to(f) (f: a binary file) so that path always holds a whole file,
    the old one or the new: into a temporary file beside it (its name tells its target, host and process;
    orphans that killed processes left are cleaned up), flushed to disk, given the permissions a plain
    open() would give (umask), then renamed over path. A Ctrl-C lands after the rename or the clean-up."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot save {path}: directory {directory} does not exist")
    _check_writable(path)
    prefix = _temporary_prefix(path)
    _remove_orphans(directory, os.path.basename(path))
    with whole_steps():
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                write_to(f)
                f.flush()
                os.fchmod(f.fileno(), 0o666 & ~_umask())
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def write(path, arrays, meta):
    """arrays: name -> ndarray; meta: JSON-serialisable dict (config, counters, RNG state)."""
    header = {"format": FORMAT, "version": VERSION, **meta}
    write_atomically(path, lambda f: np.savez(f, meta=np.array(json.dumps(header)), **arrays))


def _npy_header(f, name):
    """(shape, dtype) of a .npy member, read with NumPy's header size limit; ValueError if malformed."""
    try:
        major, _ = np.lib.format.read_magic(f)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif major in (2, 3):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unknown .npy version {major}")
    except (ValueError, SyntaxError, TypeError, EOFError, OSError) as exc:
        raise ValueError(f"its {name} array has no valid .npy header ({type(exc).__name__})") from None
    if dtype.hasobject:
        raise ValueError(f"its {name} array holds Python objects; checkpoints hold only numbers")
    return shape, dtype


def _read_meta(archive):
    info = archive.getinfo("meta.npy")
    if info.file_size > MAX_META_BYTES:
        raise ValueError(f"its metadata is {info.file_size} bytes, more than a checkpoint's {MAX_META_BYTES}")
    with archive.open(info) as f:
        shape, dtype = _npy_header(f, "meta")
        if shape != () or dtype.kind != "U":
            raise ValueError("its metadata is not a JSON string")
        raw = f.read(dtype.itemsize)
    if len(raw) != dtype.itemsize:
        raise ValueError("its metadata is truncated")
    try:
        text = np.frombuffer(raw, dtype=dtype)[0]
        meta = json.loads(str(text))
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise ValueError("its metadata is not valid JSON (or is nested too deeply)") from None
    if not isinstance(meta, dict):
        raise ValueError(f"its metadata is a JSON {type(meta).__name__}, not an object")
    return meta


def _read_array(archive, name, length):
    """The (length,) float32 array `name`, its header checked before anything is allocated."""
    member = name + ".npy"
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise ValueError(f"it has no {name} array") from None
    with archive.open(info) as f:
        shape, dtype = _npy_header(f, name)
        if dtype != np.dtype("<f4") or shape != (length,):
            raise ValueError(f"its {name} array is {shape} {dtype}, the saved config needs ({length},) float32")
        raw = f.read(4 * length)
    if len(raw) != 4 * length:
        raise ValueError(f"its {name} array is truncated")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)  # a writable, native-order copy


def read(path, array_length):
    """(arrays, meta) of a checkpoint; array_length(meta) -> the length every flat array must have (it may
    raise ValueError for a bad config). FileNotFoundError and PermissionError pass through; any problem
    with the file's contents is a ValueError."""
    path = os.fspath(path)
    try:
        archive = zipfile.ZipFile(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise ValueError(f"{path} is not a fastbp checkpoint: not an .npz archive") from None
    try:
        with archive:
            if "meta.npy" not in archive.namelist():
                raise ValueError("it has no metadata")
            meta = _read_meta(archive)
            if meta.get("format") != FORMAT:
                raise ValueError("its metadata does not name the fastbp checkpoint format")
            if meta.get("version") != VERSION:
                raise ValueError(f"it is checkpoint version {meta.get('version')!r}; this fastbp reads {VERSION}")
            length = array_length(meta)
            arrays = {name: _read_array(archive, name, length) for name in ARRAYS}
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        # NotImplementedError: an unsupported compression; RuntimeError: an encrypted member.
        raise ValueError(f"{path} is not a readable fastbp checkpoint: a damaged archive "
                         f"({type(exc).__name__})") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not a valid fastbp checkpoint: {exc}") from None
    return arrays, meta
