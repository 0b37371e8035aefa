"""Flush-to-zero for the kernels' threads: subnormal floats (below 1.2e-38) become zero.

Training that converges drives gradients and deltas towards zero; once they turn subnormal, every
multiply on them takes ~100 cycles instead of ~1 and a step slows down tenfold (measured here: a
256-wide network stepping at 12 ms, then at 110-480 ms once its deltas went subnormal). TensorFlow
and JAX flush them on the CPU by default; fastbp does so inside its own parallel loops only, setting
the x86 MXCSR FTZ and DAZ bits on entry and restoring the thread's previous value on exit, so the
caller's floating-point environment is never changed. Values that small change no float32 result
above 1e-38 in absolute terms. On other processors these are no-ops.
"""
import platform

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
_FTZ_DAZ = 0x8040  # MXCSR bit 15 (flush to zero) | bit 6 (denormals are zero)


@intrinsic
def _read_mxcsr(typingctx):
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()]),
                                            "llvm.x86.sse.stmxcsr")
        builder.call(fn, [builder.bitcast(slot, ir.IntType(8).as_pointer())])
        return builder.zext(builder.load(slot), ir.IntType(64))
    return types.int64(), codegen


@intrinsic
def _write_mxcsr(typingctx, value):
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        builder.store(builder.trunc(args[0], ir.IntType(32)), slot)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()]),
                                            "llvm.x86.sse.ldmxcsr")
        builder.call(fn, [builder.bitcast(slot, ir.IntType(8).as_pointer())])
        return context.get_dummy_value()
    return types.none(types.int64), codegen


if _X86:
    # Writing MXCSR costs tens of cycles, so each function writes it only where the bits are not on already:
    # inside a call that set them (serial.run_steps does for the whole call), a kernel's own pair then
    # writes nothing. Measured here, steps of [16, 64, 64, 4] at batch 32 (the rl workload, a dozen pairs a
    # step): 7.6-7.7 -> 7.2-7.5 us (three interleaved rounds).
    @njit(cache=True, nogil=True, inline="always")
    def flush_denormals():
        """Turns FTZ and DAZ on for this thread; returns the previous state for restore()."""
        saved = _read_mxcsr()
        if saved & _FTZ_DAZ != _FTZ_DAZ:
            _write_mxcsr(saved | _FTZ_DAZ)
        return saved

    @njit(cache=True, nogil=True, inline="always")
    def restore(saved):
        """Undoes flush_denormals(): MXCSR back to `saved`, what flush_denormals returned."""
        if saved & _FTZ_DAZ != _FTZ_DAZ:
            _write_mxcsr(saved)
else:
    @njit(cache=True, nogil=True, inline="always")
    def flush_denormals():
        return 0

    @njit(cache=True, nogil=True, inline="always")
    def restore(saved):
        pass
