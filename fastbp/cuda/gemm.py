"""Tiled SGEMM with fused epilogues: kernels 1, 3 and 4 on the GPU (dense forward, delta propagation,
weight gradient), on exactly the CPU backend's layouts (see cpu/dense_forward.py).

C[:m, :n] = op(A) @ op(B), all row-major float32 with row strides lda, ldb, ldc; op(X) = X or X^T.
Each block computes a BM x BN tile of C, staging BK-deep slices of op(A) and op(B) in shared memory;
each thread accumulates a TM x TN patch in registers. Threads per block: (BM / TM) * (BN / TN).
Every element of C is one thread's sequential sum over k: no atomics, the same bits on every run.

Split k (weight gradients of narrow layers over a long batch, where C has only a few tiles): block z of the
grid sums k in [z * k_chunk, (z + 1) * k_chunk) into its own partial C at c[z * c_stride:]; the caller
adds the partials in a fixed order (weight_grad.py). Without a split, k_chunk >= k and the grid has z = 1.

Epilogue, applied to each element before it is stored (aux has C's layout, row stride ld_aux):
    EPI_NONE        c
    EPI_ACTIVATE    act(c), then inverted dropout when dropout_threshold > 0     (forward, hidden layers);
                    a slope-storing activation (device_math.stores_slope) also writes act'(c) into aux
    EPI_DERIVATIVE  c * act'(a), a = aux (a stored activation, undoing its dropout first, or the stored
                    act'(Z) of a slope-storing activation)                                  (BP2)
aux may be C itself (delta written over the activations it was computed from): each element is read
and written by the same thread, after the products that need other memory are done.
"""
import math

from numba import cuda, float32

from . import device_math as dm

EPI_NONE, EPI_ACTIVATE, EPI_DERIVATIVE = 0, 1, 2

# Production tiles: 64 x 64 per block, 4 x 4 per thread (256 threads), 8-deep k slices.
PRODUCTION_TILES = (64, 64, 8, 4, 4)
# Tiny tiles for the CUDA simulator, which runs every thread as a Python thread.
SIMULATOR_TILES = (8, 8, 4, 2, 2)

_kernels = {}


@cuda.jit(device=True, inline=True)
def _store(c, base, ldc, r, col, m, n, v, epilogue, activation, aux, ld_aux, layer, dropout_key, dropout_threshold):
    """Applies the epilogue to one element of C and stores it, if it lies inside C."""
    if r >= m or col >= n:
        return
    if epilogue == EPI_ACTIVATE:
        if dm.stores_slope(activation):  # act'(Z) kept for the backward pass, in aux
            aux[r * ld_aux + col] = dm.slope(v, activation)
        v = dm.forward_epilogue(v, activation, dropout_key, layer, r, col, dropout_threshold)
    elif epilogue == EPI_DERIVATIVE:
        v = dm.backward_epilogue(v, aux[r * ld_aux + col], activation, dropout_key, layer, r, col,
                                 dropout_threshold)
    c[base + r * ldc + col] = v


# The kernel's source, with the TM x TN accumulators as named scalars: a local array indexed in loops
# stays in local memory (check_ptx.py saw 64 bytes of it); scalars live in registers. The sums pass
# through shared memory to the epilogue, which then runs once per element in one loop: consecutive
# threads store consecutive columns, and the epilogue's code exists once, not once per accumulator
# (that took the kernel's compile from 14.8 s to a few).
_TEMPLATE = """
def gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, epilogue, activation, aux, ld_aux,
         layer, dropout_key, dropout_threshold, k_chunk, c_stride):
    a_tile = cuda.shared.array((BK, BM), float32)  # op(A)[row0:row0+BM, k0:k0+BK], transposed
    b_tile = cuda.shared.array((BK, BN), float32)  # op(B)[k0:k0+BK, col0:col0+BN]
    c_tile = cuda.shared.array((BM, BN_PADDED), float32)  # the block's sums before the epilogue (+1: no bank conflicts)
    tid = cuda.threadIdx.x
    row0 = cuda.blockIdx.y * BM
    col0 = cuda.blockIdx.x * BN
    ta = (tid // THREADS_N) * TM
    tb = (tid % THREADS_N) * TN
    k_begin = cuda.blockIdx.z * k_chunk
    k_end = min(k, k_begin + k_chunk)
    partial_base = cuda.blockIdx.z * c_stride
{zero}
    for k0 in range(k_begin, k_end, BK):
        for t in range(A_LOADS):
            idx = tid + t * N_THREADS
            if idx < BM * BK:
                r, kk = idx // BK, idx % BK
                gr, gk = row0 + r, k0 + kk
                v = float32(0.0)
                if gr < m and gk < k_end:
                    v = a[gk * lda + gr] if trans_a else a[gr * lda + gk]
                a_tile[kk, r] = v
        for t in range(B_LOADS):
            idx = tid + t * N_THREADS
            if idx < BK * BN:
                kk, cc = idx // BN, idx % BN
                gk, gc = k0 + kk, col0 + cc
                v = float32(0.0)
                if gk < k_end and gc < n:
                    v = b[gc * ldb + gk] if trans_b else b[gk * ldb + gc]
                b_tile[kk, cc] = v
        cuda.syncthreads()
        for kk in range(BK):
{load}
{fma}
        cuda.syncthreads()
{stage}
    cuda.syncthreads()
    for idx in range(tid, BM * BN, N_THREADS):
        r = idx // BN
        cc = idx - r * BN
        _store(c, partial_base, ldc, row0 + r, col0 + cc, m, n, c_tile[r, cc], epilogue, activation, aux, ld_aux,
               layer, dropout_key, dropout_threshold)
"""


def make_gemm(bm, bn, bk, tm, tn):
    """The GEMM kernel for one tile configuration (generated and compiled once per configuration)."""
    key = (bm, bn, bk, tm, tn)
    if key in _kernels:
        return _kernels[key]
    n_threads = (bm // tm) * (bn // tn)
    src = _TEMPLATE.format(
        zero="\n".join(f"    acc_{i}_{j} = float32(0.0)" for i in range(tm) for j in range(tn)),
        load="\n".join([f"            a_{i} = a_tile[kk, ta + {i}]" for i in range(tm)]
                       + [f"            b_{j} = b_tile[kk, tb + {j}]" for j in range(tn)]),
        fma="\n".join(f"            acc_{i}_{j} += a_{i} * b_{j}" for i in range(tm) for j in range(tn)),
        stage="\n".join(f"    c_tile[ta + {i}, tb + {j}] = acc_{i}_{j}" for i in range(tm) for j in range(tn)))
    namespace = {"cuda": cuda, "float32": float32, "_store": _store, "BM": bm, "BN": bn, "BK": bk, "TM": tm,
                 "TN": tn, "BN_PADDED": bn + 1, "THREADS_N": bn // tn, "N_THREADS": n_threads,
                 "A_LOADS": (bm * bk + n_threads - 1) // n_threads, "B_LOADS": (bk * bn + n_threads - 1) // n_threads}
    exec(compile(src, f"<fastbp.cuda.gemm {key}>", "exec"), namespace)
    _kernels[key] = (cuda.jit(namespace["gemm"]), n_threads)
    return _kernels[key]


def launch(tiles, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, epilogue=EPI_NONE, activation=0, aux=None,
           ld_aux=0, layer=0, dropout_key=0, dropout_threshold=0, k_chunk=None):
    """Runs C = op(A) @ op(B) with its epilogue; a, b, c, aux: 1-D device arrays starting at element 0.

    k_chunk < k: k is cut into ceil(k / k_chunk) chunks and c holds one partial product of m * ldc
    elements per chunk, back to back (the epilogue must be EPI_NONE)."""
    bm, bn, bk, tm, tn = tiles
    kernel, n_threads = make_gemm(*tiles)
    k_chunk = max(k, 1) if k_chunk is None else k_chunk
    grid = (math.ceil(n / bn), math.ceil(m / bm), max(1, math.ceil(k / k_chunk)))
    kernel[grid, n_threads](trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, epilogue, activation,
                            c if aux is None else aux, ld_aux, layer, dropout_key, dropout_threshold, k_chunk,
                            m * ldc)
