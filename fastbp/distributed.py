"""Data-parallel training over MPI: what a Trainer given `comm=` does differently, in one place.

Horovod's recipe, with mpi4py as the engine (no sockets or process pools of our own):
- at construction, rank 0's initial state (weights, shuffling RNG, dropout seed) is broadcast;
- every step, each rank computes the gradient of its part of the global batch, weighted by its share
  of the batch's rows, and one in-place Allreduce (MPI_SUM) over the flat float32 gradient buffer adds
  the parts up; every rank then applies the same update, so parameters stay identical on every rank;
- loss, accuracy and the "Ctrl-C pending" flag travel in a second, 3-number Allreduce, so every rank
  sees the same (possibly non-finite) loss and stops after the same step;
- data checks run on every rank, and an error on any rank is raised on every rank (agreement), never
  left to deadlock the others in the next collective call.

Which rows a rank computes (row_parts):
- replicated data (every rank was given the whole data set): of each batch's rows, rank r takes the
  contiguous part r of P (sizes differ by at most one row);
- sharded data (each rank was given only its own rows): the data set is the ranks' shards one after
  another in rank order, and the shuffled order and the batches are those of that concatenation; each
  rank computes the rows of each batch that it holds.
Either way the steps are those of one process on the whole data set, up to the order of the sums: the
gradient is sum over ranks (in the MPI library's order) of (n_r / n) x (mean gradient of rank r's n_r rows).

`Single` stands in for the communicator when there is none, so the Trainer has one code path.
"""
import contextlib
import sys

import numpy as np

# Which Python exceptions an error on another rank is re-raised as (anything else: RuntimeError).
_PORTABLE_ERRORS = {cls.__name__: cls for cls in (ValueError, TypeError, MemoryError, FloatingPointError,
                                                   OverflowError, IndexError, KeyError, OSError,
                                                   FileNotFoundError, PermissionError, RuntimeError)}


def wrap(comm):
    """A Collective for an mpi4py communicator, Single for None; TypeError for anything else."""
    if comm is None:
        return Single()
    if isinstance(comm, (Single, Collective)):
        return comm
    needed = ("Allreduce", "allgather", "bcast", "Get_rank", "Get_size", "Barrier")
    if not all(callable(getattr(comm, name, None)) for name in needed):
        raise TypeError(f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD) or None, got {comm!r}")
    if getattr(comm, "Is_inter", lambda: False)():
        raise TypeError("comm must be an intracommunicator (an intercommunicator joins two groups)")
    return Collective(comm)


# Set by the launchers in every process they start: MPICH's and Intel MPI's hydra (PMI), Open MPI, PMIx
# (Slurm's srun among others).
_LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


def launched_world():
    """MPI.COMM_WORLD when this process is one of several started by an MPI launcher (mpiexec, srun),
    else None, without importing mpi4py then. ImportError naming the fix when mpi4py is missing."""
    import os
    sizes = [os.environ.get(name) for name in _LAUNCHER_SIZE_VARIABLES]
    if not any(size and size.isdigit() and int(size) > 1 for size in sizes):
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("this process was started by an MPI launcher, but mpi4py is not installed: "
                          "pip install 'fastbp[mpi]'") from None
    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def part(n, size, rank):
    """[lo, hi) of rank's contiguous share of n rows split into `size` parts (first parts one row longer)."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class _NoAgreement:
    """Single's agreement: one process has no other rank to agree with (a plain object, not a
    contextlib generator: fit enters it several times an epoch)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_AGREEMENT = _NoAgreement()


class Single:
    """One process: every collective operation is the identity."""
    size, rank, is_root, comm = 1, 0, True, None

    def agreement(self):
        return _NO_AGREEMENT

    def broadcast(self, obj):
        return obj

    def allgather(self, obj):
        return [obj]

    def sum_(self, array):
        pass

    def any_(self, flag):
        return bool(flag)

    def node_ranks(self):
        return 1

    def node_rank(self):
        return 0

    def row_parts(self, n_rows, sharded, call=()):
        return RowParts(0, n_rows, n_rows, sharded=False)


def _abort_on_uncaught_exception(MPI):
    """Makes an exception that ends one rank's program end the whole job (MPI_Abort), as
    `python -m mpi4py script.py` does: otherwise that rank waits in MPI_Finalize and the others wait for
    it in their next collective call, forever. Installed once, in front of the hook already there."""
    previous = sys.excepthook
    if getattr(previous, "_fastbp_aborts", False):
        return

    def hook(kind, value, traceback):
        previous(kind, value, traceback)
        if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
            sys.stderr.flush()
            MPI.COMM_WORLD.Abort(1)
    hook._fastbp_aborts = True
    sys.excepthook = hook


class Collective:
    """An mpi4py intracommunicator with the operations a Trainer needs. Every method is collective: each
    rank of the communicator must call it, in the same order (the Trainer's methods do so)."""

    def __init__(self, comm):
        from mpi4py import MPI
        self._MPI = MPI
        self.comm = comm
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        self.is_root = self.rank == 0
        if self.size > 1:
            _abort_on_uncaught_exception(MPI)

    @contextlib.contextmanager
    def agreement(self):
        """Runs the block on every rank; if it raised on any rank, every rank raises: its own exception
        where it had one, else the same kind of error naming the rank it came from. Without this, the
        ranks without an error would wait forever in the next collective call."""
        error = None
        try:
            yield
        except Exception as exc:  # noqa: BLE001  (collected, then re-raised below on every rank)
            error = exc
        reports = self.comm.allgather(None if error is None else (type(error).__name__, str(error)))
        if error is not None:
            raise error
        for rank, report in enumerate(reports):
            if report is not None:
                kind, message = report
                raise _PORTABLE_ERRORS.get(kind, RuntimeError)(f"on rank {rank}: {message}")

    def broadcast(self, obj):
        """Rank 0's obj, on every rank."""
        return self.comm.bcast(obj, root=0)

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def sum_(self, array):
        """In place: array <- the sum of every rank's array (float32 or float64, C-contiguous)."""
        mpi_type = {np.dtype(np.float32): self._MPI.FLOAT, np.dtype(np.float64): self._MPI.DOUBLE}[array.dtype]
        self.comm.Allreduce(self._MPI.IN_PLACE, [array, mpi_type], op=self._MPI.SUM)

    def any_(self, flag):
        """True on every rank if flag is true on any."""
        return bool(self.comm.allreduce(1 if flag else 0, op=self._MPI.MAX))

    def _node(self):
        """(this rank's index among the ranks on its machine, how many ranks share the machine)."""
        local = self.comm.Split_type(self._MPI.COMM_TYPE_SHARED, key=self.rank)
        try:
            return local.Get_rank(), local.Get_size()
        finally:
            local.Free()

    def node_ranks(self):
        """How many ranks of this communicator share this machine (they share its cores)."""
        return self._node()[1]

    def node_rank(self):
        """This rank's index among the ranks on its machine (which GPU it takes)."""
        return self._node()[0]

    def row_parts(self, n_rows, sharded, call=()):
        """The RowParts of a data set given as n_rows rows on this rank (see the module's docstring).

        call: the arguments that decide which collective operations follow (epochs, batch size, whether
        there is validation data, ...). ValueError on every rank when they, or `sharded`, differ between
        ranks, or when replicated data has a different row count on some rank: the ranks would otherwise
        wait for each other forever."""
        reports = self.comm.allgather((int(n_rows), bool(sharded), call))
        for name, index in (("sharded", 1), ("the call", 2)):
            values = [report[index] for report in reports]
            if any(v != values[0] for v in values):
                if all(isinstance(v, dict) for v in values):  # name only the arguments that differ
                    keys = [k for k in values[0] if any(v.get(k) != values[0][k] for v in values)]
                    values = [{k: v.get(k) for k in keys} for v in values]
                listed = "; ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
                raise ValueError(f"every rank must make the same call with comm; {name} differs ({listed})")
        counts = [report[0] for report in reports]
        if sharded:
            start = sum(counts[:self.rank])
            return RowParts(start, start + counts[self.rank], sum(counts), sharded=True, size=self.size,
                            rank=self.rank)
        if len(set(counts)) != 1:
            listed = ", ".join(f"rank {r}: {c}" for r, c in enumerate(counts))
            raise ValueError(f"with comm and sharded=False every rank must be given the same data set; the row "
                             f"counts differ ({listed}). Pass sharded=True if each rank holds its own rows.")
        return RowParts(0, n_rows, n_rows, sharded=False, size=self.size, rank=self.rank)


class RowParts:
    """Which rows of each batch this rank computes. Global rows are indices into the whole data set
    (n_total rows); this rank holds global rows [start, stop) as its local rows 0 .. stop - start."""

    def __init__(self, start, stop, n_total, sharded, size=1, rank=0):
        self.start, self.stop, self.n_total = start, stop, n_total
        self.sharded, self.size, self.rank = sharded, size, rank

    def mine(self, rows):
        """(local row indices (int64) of this rank's part of the batch `rows` (global indices, in order),
        its share of the batch: len(mine) / len(rows), the batch position its dropout masks start at).

        Replicated data: the part is positions [lo, hi) of the batch, and its masks are the ones one process
        draws for them. Sharded data: the batch's rows held by lower ranks come first (its masks are those
        of the batch ordered by rank: as random, though not the same draw as one process's)."""
        if self.sharded:
            held = rows[(rows >= self.start) & (rows < self.stop)]
            local, first = held - self.start, int(np.count_nonzero(rows < self.start))
        else:
            first, hi = part(rows.size, self.size, self.rank)
            local = rows[first:hi]
        return np.ascontiguousarray(local, dtype=np.int64), local.size / rows.size, first
