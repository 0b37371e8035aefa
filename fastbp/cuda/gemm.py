"""Tiled SGEMM with fused epilogues: kernels 1, 3 and 4 on the GPU (dense forward, delta propagation,
weight gradient), on exactly the CPU backend's layouts (see cpu/dense_forward.py).

C[:m, :n] = op(A) @ op(B), all row-major float32 with row strides lda, ldb, ldc; op(X) = X or X^T.
Each block computes a BM x BN tile of C, staging BK-deep slices of op(A) and op(B) in shared memory;
each thread accumulates a TM x TN patch in registers. Threads per block: (BM / TM) * (BN / TN).
Every element of C is one thread's sequential sum over k: no atomics, the same bits on every run.

Epilogue, applied to each element before it is stored (aux has C's layout, row stride ld_aux):
    EPI_NONE        c
    EPI_ACTIVATE    act(c), then inverted dropout when dropout_threshold > 0     (forward, hidden layers)
    EPI_DERIVATIVE  c * act'(a), a = aux (a stored activation, undoing its dropout first)   (BP2)
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


def make_gemm(bm, bn, bk, tm, tn):
    """The GEMM kernel for one tile configuration (compiled once per configuration)."""
    key = (bm, bn, bk, tm, tn)
    if key in _kernels:
        return _kernels[key]
    threads_m, threads_n = bm // tm, bn // tn
    n_threads = threads_m * threads_n
    a_loads = (bm * bk + n_threads - 1) // n_threads
    b_loads = (bk * bn + n_threads - 1) // n_threads

    @cuda.jit(fastmath=False)
    def gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, epilogue, activation, aux, ld_aux,
             layer, dropout_key, dropout_threshold):
        a_tile = cuda.shared.array((bk, bm), float32)  # op(A)[row0:row0+bm, k0:k0+bk], transposed
        b_tile = cuda.shared.array((bk, bn), float32)  # op(B)[k0:k0+bk, col0:col0+bn]
        acc = cuda.local.array((tm, tn), float32)
        tid = cuda.threadIdx.x
        row0 = cuda.blockIdx.y * bm
        col0 = cuda.blockIdx.x * bn
        ty = tid // threads_n
        tx = tid % threads_n
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = 0.0
        for k0 in range(0, k, bk):
            for t in range(a_loads):
                idx = tid + t * n_threads
                if idx < bm * bk:
                    r, kk = idx // bk, idx % bk
                    gr, gk = row0 + r, k0 + kk
                    v = float32(0.0)
                    if gr < m and gk < k:
                        v = a[gk * lda + gr] if trans_a else a[gr * lda + gk]
                    a_tile[kk, r] = v
            for t in range(b_loads):
                idx = tid + t * n_threads
                if idx < bk * bn:
                    kk, cc = idx // bn, idx % bn
                    gk, gc = k0 + kk, col0 + cc
                    v = float32(0.0)
                    if gk < k and gc < n:
                        v = b[gc * ldb + gk] if trans_b else b[gk * ldb + gc]
                    b_tile[kk, cc] = v
            cuda.syncthreads()
            for kk in range(bk):
                for i in range(tm):
                    av = a_tile[kk, ty * tm + i]
                    for j in range(tn):
                        acc[i, j] += av * b_tile[kk, tx * tn + j]
            cuda.syncthreads()
        for i in range(tm):
            r = row0 + ty * tm + i
            if r < m:
                for j in range(tn):
                    col = col0 + tx * tn + j
                    if col < n:
                        v = acc[i, j]
                        if epilogue == EPI_ACTIVATE:
                            v = dm.activate(v, activation)
                            if dropout_threshold > 0:
                                if dm.keeps(dropout_key, layer, r, col, dropout_threshold):
                                    v *= dm.inv_keep(dropout_threshold)
                                else:
                                    v = float32(0.0)
                        elif epilogue == EPI_DERIVATIVE:
                            stored = aux[r * ld_aux + col]
                            if dropout_threshold > 0:
                                if dm.keeps(dropout_key, layer, r, col, dropout_threshold):
                                    v *= dm.inv_keep(dropout_threshold)
                                    stored *= dm.keep(dropout_threshold)
                                else:
                                    v = float32(0.0)
                            v *= dm.derivative(stored, activation)
                        c[r * ldc + col] = v

    _kernels[key] = (gemm, n_threads)
    return _kernels[key]


def launch(tiles, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, epilogue=EPI_NONE, activation=0, aux=None,
           ld_aux=0, layer=0, dropout_key=0, dropout_threshold=0, stream=0):
    """Runs C = op(A) @ op(B) with its epilogue; a, b, c, aux: 1-D device arrays starting at element 0."""
    bm, bn, bk, tm, tn = tiles
    kernel, n_threads = make_gemm(*tiles)
    grid = (math.ceil(n / bn), math.ceil(m / bm))
    kernel[grid, n_threads, stream](trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, epilogue, activation,
                                    c if aux is None else aux, ld_aux, layer, dropout_key, dropout_threshold)
