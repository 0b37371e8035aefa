"""Row-major SGEMM from compiled code, through the BLAS that Numba itself uses for np.dot.

np.dot inside @njit only accepts whole contiguous arrays and writes a new contiguous result. The
kernels need more: write a product into a strided slice (an activation buffer whose rows carry an
extra column of ones), accumulate into it (beta), and read a transposed operand in place. Numba's
exported `numba_xxgemm` helper takes BLAS's full argument list, resolves SciPy's BLAS at run time
and, being a named symbol rather than a ctypes pointer, keeps `cache=True` working.
"""
import numpy as np
from numba import njit, types
from numba.np.linalg import _BLAS

_BLAS()  # raises a clear error if SciPy's BLAS is missing
_xxgemm = types.ExternalFunction("numba_xxgemm", _BLAS.numba_xxgemm(types.float32).sig)

NO_TRANS = ord("N")
TRANS = ord("T")


@njit(cache=True, nogil=True)
def gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """C = op(A) @ op(B) + beta * C, all row-major float32, op(X) = X or X^T.

    a, b, c: 1-D float32 arrays starting at each matrix's first element (a slice of a flat buffer);
    op(A) is (m, k), op(B) is (k, n), C is (m, n); lda, ldb, ldc: row strides in elements.
    Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, hence the swapped operands.
    """
    # Every matrix must lie inside its array: a product never reads or writes out of bounds.
    rows_a, cols_a = (k, m) if trans_a == TRANS else (m, k)
    rows_b, cols_b = (n, k) if trans_b == TRANS else (k, n)
    if (cols_a > lda or cols_b > ldb or n > ldc or (rows_a - 1) * lda + cols_a > a.size
            or (rows_b - 1) * ldb + cols_b > b.size or (m - 1) * ldc + n > c.size):
        raise IndexError("gemm operand does not fit its buffer")
    scalars = np.empty(2, np.float32)
    scalars[0] = 1.0
    scalars[1] = beta
    status = _xxgemm(ord("s"), trans_b, trans_a, n, m, k, scalars[0:].ctypes, b.ctypes, ldb,
                     a.ctypes, lda, scalars[1:].ctypes, c.ctypes, ldc)
    if status != 0:
        raise RuntimeError("BLAS sgemm failed")
