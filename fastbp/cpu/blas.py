"""Row-major SGEMM from compiled code, and its split into per-thread blocks.

np.dot inside @njit only takes whole contiguous arrays and returns a new contiguous result. The
kernels need more: write a product into a strided slice (an activation buffer whose rows carry an
extra column of ones), read a transposed operand in place, and compute one block of the result per
thread. Numba's exported `numba_xxgemm` helper takes BLAS's full argument list, resolves SciPy's BLAS
at run time and, being a named symbol rather than a ctypes pointer, keeps `cache=True` working.

Threading: each Numba thread calls BLAS on its own block, so BLAS itself must run single-threaded
while fastbp's kernels run (threads.py does that); otherwise both thread pools fight for the cores.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.linalg import _BLAS

from .inline_pipeline import InliningCompiler

# Without Numba's runtime (_nrt=False): gemm_into, gemm and gemm_block allocate nothing, and a function
# compiled with the runtime counts a reference to each array argument on entry and exit, through calls
# into the runtime even for arrays without a memory record: 18 such calls per product, from
# gemm_block down. Without them a one-row step of [8, 32, 1] took 347 ns against 395-408, [8, 4, 4, 4, 4, 1]
# 653 against 853-888 (train_steps of 4,096 one-row steps, median of 30).
# gemm_into has an explicit signature: callers pass the TRANS/NO_TRANS constants, which Numba would
# otherwise treat as literal types and compile a separate copy for every combination (seconds of first-run
# time). gemm and gemm_block, two small wrappers, are inlined into their callers instead: compiled on their
# own, each re-optimized and re-emitted the whole of gemm_into, which Numba links into every caller (about
# 0.5 s each). With inline_pipeline.py's inliner, a first fit and predict of [64, 100, 10] on an empty cache
# then took 9.3-10.1 s against 9.7-10.7 s, and a first fit of [784, 512, 512, 10] 18.1-18.9 s against
# 18.7-19.3 s (interleaved, three and two rounds; the same bits). Before that inliner, inlining them cost
# the parallel entry point 1.5 s more than it saved.
_i8 = types.int64
_vec = types.Array(types.float32, 1, "C")

_BLAS()  # raises a clear error if SciPy's BLAS is missing
_xxgemm = types.ExternalFunction("numba_xxgemm", _BLAS.numba_xxgemm(types.float32).sig)

NO_TRANS = ord("N")
_SINGLE = ord("s")  # the BLAS routine's type: a constant, so that no string code is compiled (0.1 s)
TRANS = ord("T")
_u = np.uint64
# Products of at most this many multiply-adds, and those of one row (a batch of 1), are computed by
# small_gemm's loops: a BLAS call costs 150-300 ns before any arithmetic, and its kernels are tuned for
# blocks, not vectors (measured here, OpenBLAS: (1, 32, 9) 300 against 50 ns, (1, 256, 32) 3.0 against
# 0.5 us, (8, 32, 8) 260 against 190 ns; from (16, 16, 16) on, BLAS wins).
SMALL_MACS = 2048
# small_gemm's loops: reassociation lets its sums vectorize. small_gemm is inlined into gemm_into (one
# compiled function instead of two: a first compile 0.25 s shorter), and inlined code is compiled with the
# caller's flags, so gemm_into carries them too (it has no arithmetic of its own besides).
_SMALL_FASTMATH = {"contract", "reassoc", "nsz"}


@njit(cache=True, nogil=True, fastmath=_SMALL_FASTMATH, inline="always")
def small_gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """gemm_into's product by plain loops, for small ones (SMALL_MACS) and one-row batches. The caller has
    checked the bounds. Four loop shapes, chosen by which side is contiguous, each with its sums in an order
    fixed by (m, n, k) alone:
    - k = 1 (a one-row batch's weight gradient): C = A B, one product per element, vectorized along a row;
    - rows of op(B) contiguous: C[i, :] += sum of A(i, p) B[p, :] over p, four p at a time (one load and
      store of C[i, :] per four: through memory, the sum's chain is a store-to-load round trip per pass);
    - one row of A against rows of B contiguous (delta propagation, and an output layer of one unit):
      a dot product per element, vectorized along p;
    - anything else: a dot product per element.

    Indices are unsigned (_u): Numba wraps a signed index that could be negative, which keeps a loop from
    vectorizing, and a slice per row costs two atomic reference-count updates (measured here: (33, 1, 1)
    at 490 ns with slices, 90 ns like this)."""
    if k == 1:
        b_step = 1 if trans_b == NO_TRANS else ldb  # B(0, j) = b[j * b_step]
        if n == 1:
            b0 = b[0]
            for i in range(m):
                av = a[_u(i * lda)] if trans_a == NO_TRANS else a[_u(i)]
                at = _u(i * ldc)
                c[at] = av * b0 if beta == 0 else beta * c[at] + av * b0
            return
        for i in range(m):
            av = a[_u(i * lda)] if trans_a == NO_TRANS else a[_u(i)]
            c_row = _u(i * ldc)
            if beta == 0:
                for j in range(n):
                    c[c_row + _u(j)] = av * b[_u(j * b_step)]
            else:
                for j in range(n):
                    c[c_row + _u(j)] = beta * c[c_row + _u(j)] + av * b[_u(j * b_step)]
        return
    if trans_b == NO_TRANS and n >= 4:  # rows of op(B) contiguous: C[i, :] += A(i, p) B[p, :]
        for i in range(m):
            c_row = _u(i * ldc)
            if beta == 0:
                for j in range(n):
                    c[c_row + _u(j)] = 0.0
            elif beta != 1:
                for j in range(n):
                    c[c_row + _u(j)] *= beta
            p = 0
            while p + 4 <= k:
                if trans_a == NO_TRANS:
                    a0, a1, a2, a3 = a[_u(i * lda + p)], a[_u(i * lda + p + 1)], a[_u(i * lda + p + 2)], \
                        a[_u(i * lda + p + 3)]
                else:
                    a0, a1, a2, a3 = a[_u(p * lda + i)], a[_u((p + 1) * lda + i)], a[_u((p + 2) * lda + i)], \
                        a[_u((p + 3) * lda + i)]
                b0, b1, b2, b3 = _u(p * ldb), _u((p + 1) * ldb), _u((p + 2) * ldb), _u((p + 3) * ldb)
                for j in range(n):  # the branches above stay outside this loop, which vectorizes
                    c[c_row + _u(j)] += (a0 * b[b0 + _u(j)] + a1 * b[b1 + _u(j)]) \
                        + (a2 * b[b2 + _u(j)] + a3 * b[b3 + _u(j)])
                p += 4
            while p < k:
                av = a[_u(i * lda + p)] if trans_a == NO_TRANS else a[_u(p * lda + i)]
                b_row = _u(p * ldb)
                for j in range(n):
                    c[c_row + _u(j)] += av * b[b_row + _u(j)]
                p += 1
        return
    # B(p, j) = b[j * ldb + p] when op(B) is B^T, and b[p] for B of one column with unit row stride
    b_contiguous = trans_b == TRANS or (n == 1 and ldb == 1)
    for i in range(m):  # one dot product per element
        for j in range(n):
            total = np.float32(0.0)
            if trans_a == NO_TRANS and b_contiguous:
                a_row, b_row = _u(i * lda), _u(j * ldb)
                for p in range(k):
                    total += a[a_row + _u(p)] * b[b_row + _u(p)]
            else:
                for p in range(k):
                    av = a[_u(i * lda + p)] if trans_a == NO_TRANS else a[_u(p * lda + i)]
                    bv = b[_u(p * ldb + j)] if trans_b == NO_TRANS else b[_u(j * ldb + p)]
                    total += av * bv
            at = _u(i * ldc + j)
            c[at] = total if beta == 0 else beta * c[at] + total


@intrinsic
def _on_stack(typingctx, value):
    """A pointer to a float32 slot on the caller's stack holding `value`, valid until the caller returns:
    BLAS takes alpha and beta by address, and an array for them would need Numba's runtime (gemm_into runs
    without it: see there)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, context.get_value_type(types.float32))
        builder.store(args[0], slot)
        return slot
    return types.CPointer(types.float32)(types.float32), codegen


@njit(types.void(_i8, _i8, _i8, _i8, _i8, _vec, _i8, _vec, _i8, types.float32, _vec, _i8), cache=True, nogil=True,
      fastmath=_SMALL_FASTMATH, _nrt=False, pipeline_class=InliningCompiler)
def gemm_into(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """C = op(A) @ op(B) + beta C, all row-major float32, op(X) = X or X^T.

    a, b, c: 1-D float32 arrays starting at each matrix's first element (slices of flat buffers);
    op(A) is (m, k), op(B) is (k, n), C is (m, n); lda, ldb, ldc: row strides in elements.
    Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, hence the swapped operands.
    """
    # Every matrix must lie inside its array: a product never reads or writes out of bounds.
    rows_a, cols_a = (k, m) if trans_a == TRANS else (m, k)
    rows_b, cols_b = (n, k) if trans_b == TRANS else (k, n)
    if (cols_a > lda or cols_b > ldb or n > ldc or (rows_a - 1) * lda + cols_a > a.size
            or (rows_b - 1) * ldb + cols_b > b.size or (m - 1) * ldc + n > c.size):
        raise IndexError("gemm operand does not fit its buffer")
    if m * n * k <= SMALL_MACS or m == 1:
        small_gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc)
        return
    status = _xxgemm(_SINGLE, trans_b, trans_a, n, m, k, _on_stack(np.float32(1.0)), b.ctypes, ldb, a.ctypes, lda,
                     _on_stack(beta), c.ctypes, ldc)
    if status != 0:
        raise RuntimeError("BLAS sgemm failed")


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc):
    """C = op(A) @ op(B) (see gemm_into)."""
    gemm_into(trans_a, trans_b, m, n, k, a, lda, b, ldb, np.float32(0.0), c, ldc)


@njit(cache=True, nogil=True, inline="always")
def part(total, parts, index):
    """[start, stop) of the index-th of `parts` near-equal contiguous pieces of range(total)."""
    return index * total // parts, (index + 1) * total // parts


@njit(cache=True, nogil=True, inline="always")
def split_rows(m, n, threads):
    """How many blocks to cut an (m, n) result into, and whether along rows (else columns).

    Along the longer side, one block per thread, never more blocks than rows/columns to cut."""
    if m >= n:
        return min(threads, m), True
    return min(threads, n), False


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def gemm_block(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, r0, r1, c0, c1):
    """C[r0:r1, c0:c1] of C = op(A) @ op(B) (see gemm): the rows of op(A) and columns of op(B) it needs."""
    if r0 == 0 and c0 == 0:  # a block at the start (one thread's whole product): no slices, which cost
        gemm(trans_a, trans_b, r1, c1, k, a, lda, b, ldb, c, ldc)  # 10-15 ns, a tenth of a one-row step
        return
    a_block = a[r0:] if trans_a == TRANS else a[r0 * lda:]
    b_block = b[c0 * ldb:] if trans_b == TRANS else b[c0:]
    gemm(trans_a, trans_b, r1 - r0, c1 - c0, k, a_block, lda, b_block, ldb, c[r0 * ldc + c0:], ldc)


# Delta propagation multiplies row-major delta (m, k) by W^T, W (n, k): to column-major BLAS a product with
# its first operand transposed. OpenBLAS's AVX-512 (SkylakeX) kernels are slow there for small products:
# measured here (one thread, delta rows m x W's n x k, the product against W^T copied first and then a plain
# one, transpose_into included): 32 x 64 x 64 2.17 against 1.62 us, 64 x 100 x 10 1.12 against 0.85,
# 64 x 32 x 256 6.59 against 5.35; but 16 x 64 x 64 0.78 against 1.10 and 32 x 32 x 256 2.49 against 3.39
# (their small-matrix kernel takes a transposed operand when C has at most about 1,200 elements and k is at
# least 32), and from about 2^20 multiply-adds on the two are level (64 x 128 x 128 11.9 against 14.2, the
# copy then costs more than it saves). With their AVX2 (Haswell) kernels both ways ran at the same speed
# (32 x 64 x 64 3.45 us, 100 x 100 x 10 2.4 us), so there the copy is never made (cpu/backend.py).
COPY_MIN_ROWS = 16
COPY_MAX_MACS = 2 ** 20


def copy_beats_transposed(m, n, k):
    """Whether C (m, n) = A (m, k) B^T, B (n, k), runs faster on OpenBLAS's AVX-512 kernels with B^T copied
    (transpose_into) and then multiplied as it is, than with B transposed inside BLAS (see above)."""
    return m >= COPY_MIN_ROWS and m * n * k < COPY_MAX_MACS and (m * n > 1200 or k < 32)


_V8 = ir.VectorType(ir.FloatType(), 8)


def _pick(builder, a, b, lanes):
    """The 8 lanes of a and b (lanes 0-7 a's, 8-15 b's) named by lanes."""
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 8), lanes))


@intrinsic
def _transpose8x8(typingctx, w, src, ld_src, wt, dst, ld_dst):
    """wt[dst + j * ld_dst + i] = w[src + i * ld_src + j] for i, j < 8: eight rows loaded as 8-lane vectors,
    transposed by three rounds of shuffles (pairs of rows interleaved, then pairs of pairs, then halves), and
    stored as eight rows. No bounds checks: transpose_into checks the whole matrices first."""
    def codegen(context, builder, signature, args):
        w_data = context.make_array(signature.args[0])(context, builder, args[0]).data
        wt_data = context.make_array(signature.args[3])(context, builder, args[3]).data

        def vector_at(data, start, stride, k):
            at = builder.add(start, builder.mul(stride, ir.Constant(ir.IntType(64), k)))
            return builder.bitcast(builder.gep(data, [at]), _V8.as_pointer())
        rows = [builder.load(vector_at(w_data, args[1], args[2], i), align=4) for i in range(8)]
        pairs = []  # rows 2k and 2k + 1 interleaved: their columns 0, 1, 4, 5, then 2, 3, 6, 7
        for k in range(0, 8, 2):
            pairs.append(_pick(builder, rows[k], rows[k + 1], [0, 8, 1, 9, 4, 12, 5, 13]))
            pairs.append(_pick(builder, rows[k], rows[k + 1], [2, 10, 3, 11, 6, 14, 7, 15]))
        low, high = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
        quads = []  # quads[c] (c < 4): rows 0-3 (4 + c: rows 4-7) of columns c and c + 4
        for base in (0, 4):
            quads += [_pick(builder, pairs[base], pairs[base + 2], low),
                      _pick(builder, pairs[base], pairs[base + 2], high),
                      _pick(builder, pairs[base + 1], pairs[base + 3], low),
                      _pick(builder, pairs[base + 1], pairs[base + 3], high)]
        columns = [_pick(builder, quads[c], quads[c + 4], [0, 1, 2, 3, 8, 9, 10, 11]) for c in range(4)]
        columns += [_pick(builder, quads[c], quads[c + 4], [4, 5, 6, 7, 12, 13, 14, 15]) for c in range(4)]
        for j in range(8):
            builder.store(columns[j], vector_at(wt_data, args[4], args[5], j), align=4)
        return context.get_dummy_value()
    if not (isinstance(w, types.Array) and isinstance(wt, types.Array) and w.dtype == wt.dtype == types.float32):
        return None
    return types.none(w, types.int64, types.int64, wt, types.int64, types.int64), codegen


@njit(cache=True, nogil=True, _nrt=False)
def transpose_into(w, rows, cols, wt):
    """wt (cols, rows) <- w (rows, cols)^T: the first rows x cols elements of w, row-major, into the first
    cols x rows of wt. Blocks of 8 x 8 through vector shuffles (_transpose8x8), a block column of w at a time,
    the edges element by element. Measured here: 64 x 64 in 0.20 us, 128 x 128 in 1.4 us; element by
    element, eight rows at a time, 0.59 and 2.4 us."""
    if rows < 0 or cols < 0 or w.size < rows * cols or wt.size < rows * cols:
        raise IndexError("transpose_into: a matrix does not fit its buffer")
    full_rows, full_cols = rows - rows % 8, cols - cols % 8
    for j0 in range(0, full_cols, 8):
        for i0 in range(0, full_rows, 8):
            _transpose8x8(w, i0 * cols + j0, cols, wt, j0 * rows + i0, rows)
    for i in range(full_rows):  # the last columns of the full rows
        for j in range(full_cols, cols):
            wt[_u(j * rows + i)] = w[_u(i * cols + j)]
    for i in range(full_rows, rows):  # the last rows
        for j in range(cols):
            wt[_u(j * rows + i)] = w[_u(i * cols + j)]
