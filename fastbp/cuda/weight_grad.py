"""Kernel 4 on the GPU (BP3 + BP4): [dW; db] = [A_prev, 1]^T @ delta, summed over the batch.

Shapes: a_prev (n, fan_in + 1) row-major with its ones column (so the last row of the result is db);
delta (n, fan_out) with row stride ld_delta; grad (fan_in + 1, fan_out) row-major.

The product is small ((fan_in + 1) x fan_out) and its inner dimension is the batch, which may be
millions of rows: a plain tiled GEMM would give a narrow layer two or three blocks for the whole GPU.
So the batch is split into chunks (split k), each block sums its chunk into its own partial product,
and sum_partials adds the partials in chunk order: the number of chunks depends only on the shapes
and the GPU's multiprocessor count, so the result has the same bits on every run (no atomics).
"""
import math

from numba import cuda, float32

from . import gemm

TRANS, NO_TRANS = 1, 0


@cuda.jit
def sum_partials(partials, chunks, size, out):
    """out[i] = sum over z of partials[z * size + i], z in chunk order. partials (chunks * size,) float32."""
    i = cuda.grid(1)
    if i >= size:
        return
    acc = float32(0.0)
    for z in range(chunks):
        acc += partials[z * size + i]
    out[i] = acc


class WeightGradient:
    """Chooses the split for each layer shape and owns nothing but that policy.

    target_blocks: how many blocks fill the GPU (a few per multiprocessor); min_chunk: the fewest batch
    rows worth a block of their own."""

    def __init__(self, tiles, target_blocks, min_chunk, threads):
        self.tiles, self.target_blocks, self.min_chunk, self.threads = tiles, target_blocks, min_chunk, threads

    def chunking(self, m, n, k):
        """(rows per chunk, number of chunks) for an (m x n) product over k batch rows."""
        bm, bn, bk = self.tiles[:3]
        tiles = math.ceil(m / bm) * math.ceil(n / bn)
        split = min(math.ceil(self.target_blocks / tiles), k // self.min_chunk)
        if split <= 1:
            return k, 1
        k_chunk = math.ceil(k / split / bk) * bk
        return k_chunk, math.ceil(k / k_chunk)  # every chunk non-empty

    def partial_size(self, dims, n):
        """Floats of scratch the partial products of any layer need for a batch of n rows (0: no split)."""
        sizes = [0]
        for a, b in zip(dims[:-1], dims[1:]):
            _, chunks = self.chunking(int(a) + 1, int(b), n)
            sizes.append((int(a) + 1) * int(b) * chunks if chunks > 1 else 0)
        return max(sizes)

    def __call__(self, n, fan_in, fan_out, a_prev, delta, ld_delta, grad, partials):
        m = fan_in + 1
        k_chunk, chunks = self.chunking(m, fan_out, n)
        if chunks == 1:
            gemm.launch(self.tiles, TRANS, NO_TRANS, m, fan_out, n, a_prev, m, delta, ld_delta, grad, fan_out)
            return
        gemm.launch(self.tiles, TRANS, NO_TRANS, m, fan_out, n, a_prev, m, delta, ld_delta, partials, fan_out,
                    k_chunk=k_chunk)
        size = m * fan_out
        sum_partials[math.ceil(size / self.threads), self.threads](partials, chunks, size, grad)
