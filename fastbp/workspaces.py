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
