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

first_layer_step: the same product for layer 0, the last gradient of the backward pass, with the
optimizer update of the whole network in the same parallel region (a training step without clipping
whose loss is finite). Each thread updates its block of layer 0 right after computing it, while it is
still in its caches (with the batch split: each chunk of the partials' sum right after adding it up),
then its share of the other layers, whose gradients are complete by then. That saves a read of the whole
gradient from memory and one barrier per step. The gradient is weight_gradient's bit for bit, the update
optimizers.optimizer_update's up to where the compiler fuses a multiply-add (in vectorized or scalar
code, depending on where a span starts): one rounding, 2^-24 relative. Only layer 0 can be fused so: a
deeper layer's weights are still needed, unchanged, to propagate the delta through it after its gradient
is computed. (Cutting a thread's block into L2-sized pieces, each updated at once, was slower: BLAS packs
the delta panel again for every piece; wide's step went from about 2.0 to 3.2 s.)
"""
import numpy as np
from numba import njit, prange

from .blas import NO_TRANS, TRANS, gemm, gemm_block, part
from .denormals import flush_denormals, restore
from .optimizers import update_span


# Pieces of the partial-gradient sum (fixed: the order of additions never depends on the thread count).
SUM_CHUNKS = 64


@njit(cache=True, nogil=True)
def split_batch(n, fan_in, fan_out, threads):
    return threads > 1 and n >= 3 * (fan_in + 1) and n >= 2 * threads


@njit(cache=True, nogil=True, inline="always")
def add_partials_span(grad, partials, size, count, lo, hi):
    """grad[i] += partials[q * size + i] for q = 0 .. count - 1 in that order, i in [lo, hi)."""
    for i in range(lo, hi):
        total = grad[i]
        for q in range(count):
            total += partials[q * size + i]
        grad[i] = total


@njit(parallel=True, cache=True, nogil=True, inline="always")
def add_partials(grad, partials, size, count):
    """grad[:size] += partials[q * size:(q + 1) * size] for q = 0 .. count - 1, added in that order, in
    SUM_CHUNKS pieces of grad (every element's additions are in q order, whatever the pieces)."""
    for c in prange(SUM_CHUNKS):
        fp_state = flush_denormals()
        add_partials_span(grad, partials, size, count, c * size // SUM_CHUNKS, (c + 1) * size // SUM_CHUNKS)
        restore(fp_state)


@njit(parallel=True, cache=True, nogil=True, inline="always")
def add_partials_and_update(params, grads, moment1, moment2, settings, partials, size, count):
    """add_partials(grads, partials, size, count), then the optimizer update of all of params, chunk by
    chunk: each chunk of the sum is updated while it is in cache. The update runs without the subnormal
    flush, as optimizers.optimizer_update does."""
    total = params.size
    for c in prange(SUM_CHUNKS):
        lo, hi = c * total // SUM_CHUNKS, (c + 1) * total // SUM_CHUNKS
        fp_state = flush_denormals()
        add_partials_span(grads, partials, size, count, lo, min(hi, size))
        restore(fp_state)
        update_span(params, grads, moment1, moment2, settings, np.float32(1.0), lo, hi)


@njit(cache=True, nogil=True)
def block_split(fan_in, fan_out, threads):
    """(parts, by_rows): how many blocks of grad (fan_in + 1, fan_out) the threads take, along its rows or
    its columns. Rows unless the layer is much wider than its input: measured with one thread per block,
    785 x 800 over 128 rows took 0.57 ms by rows against 0.68 ms by columns, 129 x 256 over 512 rows 0.171
    against 0.178 ms, but 1025 x 4096 over 2048 rows 56.4 against 55.0 ms."""
    by_rows = 2 * (fan_in + 1) >= fan_out
    return (min(threads, fan_in + 1) if by_rows else min(threads, fan_out)), by_rows


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
    parts, by_rows = block_split(fan_in, fan_out, threads)
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


@njit(parallel=True, cache=True, nogil=True, inline="always")
def first_layer_step(a_prev, delta, ld_delta, n, fan_in, fan_out, params, grads, moment1, moment2, settings,
                     partials, threads):
    """weight_gradient() of layer 0 into grads[:(fan_in + 1) * fan_out], then the unclipped optimizer
    update of all of params (P,) from grads (P,): the other layers' gradients must be complete."""
    size = (fan_in + 1) * fan_out
    if split_batch(n, fan_in, fan_out, threads):
        if partials.size < (threads - 1) * size:
            raise IndexError("partials too small for the batch-split weight gradient")
        for p in prange(threads):
            fp_state = flush_denormals()
            r0, r1 = part(n, threads, p)
            out = grads if p == 0 else partials[(p - 1) * size:p * size]
            gemm(TRANS, NO_TRANS, fan_in + 1, fan_out, r1 - r0, a_prev[r0 * (fan_in + 1):], fan_in + 1,
                 delta[r0 * ld_delta:], ld_delta, out, fan_out)
            restore(fp_state)
        add_partials_and_update(params, grads, moment1, moment2, settings, partials, size, threads - 1)
        return
    parts, by_rows = block_split(fan_in, fan_out, threads)
    rest = params.size - size
    for p in prange(parts):
        r0, r1, c0, c1 = 0, fan_in + 1, 0, fan_out
        if by_rows:
            r0, r1 = part(fan_in + 1, parts, p)
        else:
            c0, c1 = part(fan_out, parts, p)
        fp_state = flush_denormals()
        gemm_block(TRANS, NO_TRANS, fan_in + 1, fan_out, n, a_prev, fan_in + 1, delta, ld_delta, grads, fan_out,
                   r0, r1, c0, c1)
        restore(fp_state)
        for i in range(r0, r1):
            update_span(params, grads, moment1, moment2, settings, np.float32(1.0), i * fan_out + c0,
                        i * fan_out + c1)
        lo, hi = part(rest, parts, p)
        update_span(params, grads, moment1, moment2, settings, np.float32(1.0), size + lo, size + hi)
