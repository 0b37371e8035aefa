"""Borrowed array views for compiled code: no reference counting inside a call.

Numba counts references to an array's memory with atomic increments and decrements, and every slice
(acts[a:b], one row of a tile) takes one of each. In a step of a small network the kernels take a few
hundred slices, and those atomics cost more than the arithmetic (measured here: a 2-layer forward pass
of one row at 445 ns, of which the products take under 100). borrowed(a) is `a` with its memory record
cleared: slices of it count nothing. Safe only for arrays that outlive the compiled call, as the
arguments of an entry point do (its caller holds them), and only while no borrowed view escapes the call.
The leaf kernels the entry points call (a row's activation, a loss row, the products in blas.py, the
sums) are compiled without Numba's runtime (_nrt=False): they allocate nothing, and a function compiled
with it calls into the runtime for every array argument and every slice, counted or not.
"""
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def borrowed(typingctx, array):
    """The same array (shape, strides, data), without a memory record: never counted, never freed."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        view = cgutils.create_struct_proxy(signature.return_type)(context, builder, value=args[0])
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        view.parent = cgutils.get_null_value(view.parent.type)
        return view._getvalue()
    return array(array), codegen
