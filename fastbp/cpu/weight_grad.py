"""Kernel 4 (BP3 + BP4): dW = A_prev^T @ delta and db = column sums of delta, as one product.

Shapes (n = batch rows):
    a_prev    (n, fan_in + 1) float32 row-major: A_prev with its column of ones
    delta     (n, fan_out) float32, row stride ld_delta
    grad      (fan_in + 1, fan_out) float32 output: rows [:fan_in] = dW, row [fan_in] = db
    partials  ((threads - 1) * (fan_in + 1) * fan_out,) float32 scratch, when split_batch(...) holds
[A_prev, 1]^T @ delta stacks A_prev^T delta on top of 1^T delta, which is exactly db: the bias gradient
costs no extra pass.

Two ways to share the product among threads:
- the batch is long next to the layer (n >= 3 (fan_in + 1)): each thread sums its slice of the batch
  into its own partial gradient, then the partials are added up. BLAS is at its weakest on a small
  output with a long inner dimension, and this gives each thread the whole output (measured here:
  120 vs 94 GFLOP/s for 65 x 64 over 16384 rows, 228 vs 214 for 785 x 800 over 8192);
- otherwise each thread computes a block of grad over the whole batch.
Either way the order of every sum is fixed by the thread count alone: the same inputs and thread count
give bitwise the same gradient.
"""
from numba import njit, prange

from .blas import NO_TRANS, TRANS, gemm, gemm_block, part
from .denormals import flush_denormals, restore

# Pieces of the partial-gradient sum (fixed: the order of additions never depends on the thread count).
SUM_CHUNKS = 64


@njit(cache=True, nogil=True, inline="always")
def split_batch(n, fan_in, fan_out, threads):
    return threads > 1 and n >= 3 * (fan_in + 1) and n >= 2 * threads


@njit(parallel=True, cache=True, nogil=True, inline="always")
def add_partials(grad, partials, size, count):
    """grad[:size] += partials[q * size:(q + 1) * size] for q = 0 .. count - 1, added in that order, in
    SUM_CHUNKS fixed pieces of grad (so the order of additions never depends on the thread count)."""
    for c in prange(SUM_CHUNKS):
        fp_state = flush_denormals()
        for i in range(c * size // SUM_CHUNKS, (c + 1) * size // SUM_CHUNKS):
            total = grad[i]
            for q in range(count):
                total += partials[q * size + i]
            grad[i] = total
        restore(fp_state)


@njit(parallel=True, cache=True, nogil=True, inline="always")
def weight_gradient(a_prev, delta, ld_delta, n, fan_in, fan_out, grad, partials, threads):
    size = (fan_in + 1) * fan_out
    if split_batch(n, fan_in, fan_out, threads):
        if partials.size < (threads - 1) * size:
            raise IndexError("partials too small for the batch-split weight gradient")
        for p in prange(threads):
            fp_state = flush_denormals()
            r0, r1 = part(n, threads, p)
            out = grad if p == 0 else partials[(p - 1) * size:p * size]
            gemm(TRANS, NO_TRANS, fan_in + 1, fan_out, r1 - r0, a_prev[r0 * (fan_in + 1):], fan_in + 1,
                 delta[r0 * ld_delta:], ld_delta, out, fan_out)
            restore(fp_state)
        add_partials(grad, partials, size, threads - 1)
        return
    # Blocks of rows of grad (columns of A_prev) unless the layer is much wider than its input: measured
    # with one thread per block, 785 x 800 over 128 rows took 0.57 ms by rows against 0.68 ms by columns,
    # 129 x 256 over 512 rows 0.171 against 0.178 ms, but 1025 x 4096 over 2048 rows 56.4 against 55.0 ms.
    by_rows = 2 * (fan_in + 1) >= fan_out
    parts = min(threads, fan_in + 1) if by_rows else min(threads, fan_out)
    for p in prange(parts):
        fp_state = flush_denormals()
        r0, r1, c0, c1 = 0, fan_in + 1, 0, fan_out
        if by_rows:
            r0, r1 = part(fan_in + 1, parts, p)
        else:
            c0, c1 = part(fan_out, parts, p)
        gemm_block(TRANS, NO_TRANS, fan_in + 1, fan_out, n, a_prev, fan_in + 1, delta, ld_delta, grad, fan_out,
                   r0, r1, c0, c1)
        restore(fp_state)
