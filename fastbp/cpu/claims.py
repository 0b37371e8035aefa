"""Counters that threads share inside one compiled call: atomic claims and waits, for split steps (serial.py).

Numba offers no atomics on the CPU, so these are LLVM's, through intrinsics: fetch_add is an atomic
read-modify-write (sequentially consistent: what a thread wrote before it is visible to any thread that
reads the new count), load_acquire an atomic load. Both are named instructions, not ctypes pointers, so
the functions that use them keep `cache=True`.

Layout: claims is an int64 array of CLAIM_SLOTS entries, each counter alone on its 64-byte line (slot
indices 8 apart), so that threads polling one counter do not contend for another's line:
    NEXT          the next task to hand out (serial.py numbers a step's tasks)
    GRADS_DONE    gradient parts finished, over all steps of the call
    UPDATE_WORK   update parts finished, over all steps
    UPDATES_DONE  steps whose update is complete (its last part's finisher counts it)
    STOP          0, or 1 + the step whose loss was not finite (nothing after it runs)
    JOINED        threads that entered the call (the first to enter is the one that never retires)
    RETIRE        set when a thread waited longer than SPINS_BEFORE_YIELD polls: the CPU is shared with
                  other work, and every thread but the first stops claiming tasks (serial.py)
The caller of a split call zeroes them; a call on one thread (parts == 1) zeroes its own.
"""
import platform

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

NEXT, GRADS_DONE, UPDATE_WORK, UPDATES_DONE, STOP, JOINED, RETIRE = 0, 8, 16, 24, 32, 40, 48
CLAIM_SLOTS = 56
# Polls of a counter with the CPU's spin hint before a waiting thread gives up on sharing: about 1 ms on x86
# (a `pause` takes 24 ns on this Zen 5), far more than a step's hand-off between two threads (about 0.2
# us) or a helper thread's late start, and about what a thread descheduled by another job stays off its
# core. The waiting thread then sets RETIRE and gives its core away (sched_yield) on every further poll.
# Measured here: yielding after 500 polls (12 us) made split steps of [64, 100, 10], batch 200, 20-60%
# slower than spinning (34-56 against 33-41 us a step, varying from run to run); beside one busy process
# per core, split steps that never retired took 5x (that network) to 21x ([32, 256, 256, 1], batch 64)
# their quiet time.
SPINS_BEFORE_YIELD = 40000
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def _slot_pointer(context, builder, array_type, array, index):
    ary = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer(context, builder, array_type, ary, [index], wraparound=False)


def _is_counters(array):
    return isinstance(array, types.Array) and array.dtype == types.int64 and array.ndim == 1


@intrinsic
def fetch_add(typingctx, counters, index, value):
    """counters[index] += value atomically; returns the value before."""
    if not (_is_counters(counters) and isinstance(index, types.Integer) and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        pointer = _slot_pointer(context, builder, signature.args[0], args[0], args[1])
        amount = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", pointer, amount, "seq_cst")
    return types.int64(counters, index, value), codegen


@intrinsic
def load_acquire(typingctx, counters, index):
    """counters[index], read atomically; what its writer wrote before its fetch_add is visible after."""
    if not (_is_counters(counters) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        pointer = _slot_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(pointer, "acquire", 8)
    return types.int64(counters, index), codegen


@intrinsic
def relax(typingctx, spins):
    """One poll's pause: the CPU's spin-wait hint (x86 `pause`) for the first SPINS_BEFORE_YIELD polls,
    then sched_yield(), which hands the core to any other runnable thread."""
    if not isinstance(spins, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        module = builder.module
        limit = ir.Constant(args[0].type, SPINS_BEFORE_YIELD)
        with builder.if_else(builder.icmp_signed("<", args[0], limit)) as (spinning, yielding):
            with spinning:
                if _X86:
                    builder.call(cgutils.get_or_insert_function(module, ir.FunctionType(ir.VoidType(), []),
                                                                "llvm.x86.sse2.pause"), [])
            with yielding:
                builder.call(cgutils.get_or_insert_function(module, ir.FunctionType(ir.IntType(32), []),
                                                            "sched_yield"), [])
        return context.get_dummy_value()
    return types.void(spins), codegen


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def wait_for(claims, index, target):
    """Waits until claims[index] >= target; False (at once) if the call was stopped (the STOP slot set)
    before or meanwhile, else True."""
    spins = 0
    while load_acquire(claims, index) < target:
        if load_acquire(claims, STOP) != 0:
            return False
        if spins == SPINS_BEFORE_YIELD:  # a thread this one waits for was descheduled: stop sharing
            fetch_add(claims, RETIRE, 1)
        relax(spins)
        spins += 1
    return load_acquire(claims, STOP) == 0
