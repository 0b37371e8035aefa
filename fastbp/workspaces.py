"""A small cache of per-batch-size workspaces, shared by the backends.

fit alternates between the batch size and the epoch's last, shorter batch, and evaluation uses its own
chunk size: a couple of workspaces kept by batch size avoid reallocating every step."""


class WorkspaceCache:
    def __init__(self, make, capacity=2):
        self._make, self._capacity = make, capacity
        self._items = {}

    def get(self, n):
        """The workspace for batches of n rows, most recently used kept, least recently used dropped."""
        ws = self._items.pop(n, None)
        if ws is None:
            ws = self._make(n)
            if len(self._items) >= self._capacity:
                self._items.pop(next(iter(self._items)))
        self._items[n] = ws
        return ws

    def __getitem__(self, n):
        return self._items[n]


def batch_bytes(dims, n):
    """Bytes a batch of n rows needs beyond the model: its float32 copy, [A_l, 1] for every layer and the
    logits (the deltas reuse them), and the per-row float64 loss and hits."""
    dims = [int(d) for d in dims]
    floats = n * dims[0] + n * (sum(d + 1 for d in dims[:-1]) + dims[-1])
    return 4 * floats + 16 * n


def available_host_bytes():
    """MemAvailable from /proc/meminfo (memory the kernel can give without swapping), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def rows_within(dims, budget):
    """The most rows whose batch_bytes fit in `budget` bytes (0 when not even one row does)."""
    per_row = batch_bytes(dims, 1)
    return max(0, int(budget) // per_row)
