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


def _mxcsr_call(builder, name, slot):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()]),
                                        name)
    builder.call(fn, [builder.bitcast(slot, ir.IntType(8).as_pointer())])


def _has_ftz_daz(builder, value):
    bits = ir.Constant(ir.IntType(32), _FTZ_DAZ)
    return builder.icmp_unsigned("==", builder.and_(value, bits), bits)


# Writing MXCSR costs tens of cycles, so each function writes it only where the bits are not on already: inside
# a call that set them (serial.run_steps does for the whole call), a kernel's own pair then writes nothing.
# Measured here, steps of [16, 64, 64, 4] at batch 32 (the rl workload, a dozen pairs a step): 7.6-7.7 ->
# 7.2-7.5 us (three interleaved rounds). The test is in the intrinsics' IR, not in Python: the pairs are
# inlined into every kernel, and a branch of Numba IR at each costs the first compile time.
@intrinsic
def _flush(typingctx):
    """FTZ and DAZ on; returns the previous MXCSR."""
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        _mxcsr_call(builder, "llvm.x86.sse.stmxcsr", slot)
        saved = builder.load(slot)
        with builder.if_then(builder.not_(_has_ftz_daz(builder, saved))):
            builder.store(builder.or_(saved, ir.Constant(ir.IntType(32), _FTZ_DAZ)), slot)
            _mxcsr_call(builder, "llvm.x86.sse.ldmxcsr", slot)
        return builder.zext(saved, ir.IntType(64))
    return types.int64(), codegen


@intrinsic
def _restore(typingctx, saved):
    """MXCSR back to `saved` (what _flush returned), written only if _flush changed it."""
    def codegen(context, builder, signature, args):
        value = builder.trunc(args[0], ir.IntType(32))
        with builder.if_then(builder.not_(_has_ftz_daz(builder, value))):
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(value, slot)
            _mxcsr_call(builder, "llvm.x86.sse.ldmxcsr", slot)
        return context.get_dummy_value()
    return types.none(types.int64), codegen


if _X86:
    @njit(cache=True, nogil=True, inline="always")
    def flush_denormals():
        """Turns FTZ and DAZ on for this thread; returns the previous state for restore()."""
        return _flush()

    @njit(cache=True, nogil=True, inline="always")
    def restore(saved):
        """Undoes flush_denormals(): MXCSR back to `saved`, what flush_denormals returned."""
        _restore(saved)
else:
    @njit(cache=True, nogil=True, inline="always")
    def flush_denormals():
        return 0

    @njit(cache=True, nogil=True, inline="always")
    def restore(saved):
        pass
