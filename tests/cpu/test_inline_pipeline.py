"""inline_pipeline.InliningCompiler: Numba's compiler with an inliner that copies a callee's scope once per
inlined call. It must compile the same functions to the same numbers as Numba's own compiler, copy far
fewer variables, and be the compiler of every fastbp function that inlines another."""
import importlib
import inspect
import pkgutil
import re
from unittest import mock

import numpy as np
import pytest
from numba import njit, prange
from numba.core import ir
from numba.core.registry import CPUDispatcher

import fastbp.cpu
from fastbp.cpu.inline_pipeline import InliningCompiler

_OFFSET = 3  # a freevar of the callee: must stay the module's value, not be renamed


@njit(inline="always")
def _leaf(x, scale):
    return x * scale + _OFFSET


@njit(inline="always", fastmath={"contract", "reassoc"})
def _body(a, out, flag):
    """Many blocks and variables: loops, branches, a nested inline, two call sites of _leaf."""
    total = 0.0
    for i in range(a.size):
        v = a[i]
        if v > 0.5:
            v = _leaf(v, 2.0)
        elif v < -0.5:
            v = -_leaf(-v, 0.5)
        else:
            for j in range(3):
                v = v * 0.75 + j
        total += v
        out[i] = v
    if flag:
        for i in prange(a.size):
            out[i] += total / a.size
    return total


def _caller(a, out):
    first = _body(a, out, True)
    second = _body(out, a, False)
    return first, second


def _functions():
    default = njit(fastmath={"contract", "reassoc"})(_caller)
    ours = njit(fastmath={"contract", "reassoc"}, pipeline_class=InliningCompiler)(_caller)
    return default, ours


@pytest.mark.parametrize("n", [1, 3, 33, 257])
def test_the_same_numbers_as_numbas_compiler(n):
    default, ours = _functions()
    rng = np.random.default_rng(n)
    a = rng.standard_normal(n)
    results = []
    for f in (default, ours):
        x, out = a.copy(), np.zeros(n)
        results.append((f(x, out), x, out))
    (d_total, d_x, d_out), (o_total, o_x, o_out) = results
    assert d_total == o_total  # bitwise
    np.testing.assert_array_equal(d_x, o_x)
    np.testing.assert_array_equal(d_out, o_out)


def _variable_copies(f):
    """How many ir.Var objects Numba deep-copies while compiling f for float64 arrays."""
    count = [0]
    original = ir.Var.__deepcopy__

    def counting(self, memo):
        count[0] += 1
        return original(self, memo)

    with mock.patch.object(ir.Var, "__deepcopy__", counting):
        f.compile("(float64[::1], float64[::1])")
    return count[0]


def test_a_callees_variables_are_copied_once_per_inlined_call():
    default, ours = _functions()
    copies_default, copies_ours = _variable_copies(default), _variable_copies(ours)
    # Numba's copies the callee's whole scope for each of its blocks; this inliner once per call.
    assert copies_ours * 4 < copies_default, (copies_ours, copies_default)


def test_every_function_that_inlines_another_uses_the_inlining_compiler():
    """A new entry point that inlines kernels (a closure built per variant included) must not fall back to
    Numba's copying inliner: that would cost seconds of every first fit."""
    from fastbp.cpu import serial, step, variants
    modules = [importlib.import_module("fastbp.cpu." + m.name) for m in pkgutil.iter_modules(fastbp.cpu.__path__)]
    dispatchers = {name: obj for module in modules for name, obj in vars(module).items()
                   if isinstance(obj, CPUDispatcher)}
    # The per-variant closures (building one compiles nothing) and the functions they are built from.
    dispatchers["run_steps"] = serial.run_steps_for(variants.generic_uses(False))
    dispatchers["run"] = step.run_for(variants.generic_uses(False))
    sources = {name: inspect.getsource(d.py_func) for name, d in dispatchers.items()}
    inlined = {name for name, d in dispatchers.items() if d.targetoptions.get("inline") == "always"}
    inlined |= {"_update", "_scalars"}  # optimizers.py's update rules, inlined under these names
    callers = {name for name, source in sources.items() if name not in inlined
               and any(re.search(r"\b%s\(" % callee, source) for callee in inlined)}
    assert {"run_steps", "run", "gemm_into", "run_update", "run_pipeline"} <= callers
    for name in callers:
        assert dispatchers[name]._compiler.pipeline_class is InliningCompiler, name
