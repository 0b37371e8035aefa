"""Numba's compiler with an inliner that copies a callee's variables once, not once per block.

Before inlining a function (inline="always"), Numba's InlineWorker deep-copies the callee's IR twice, one
block at a time (numba.core.inline_closurecall.InlineWorker.inline_ir; numba issue 8989). Every block
refers to the function's scope, which holds every variable of the function, so each block's copy copies
the whole scope again: blocks x variables. fastbp's entry points inline a whole training step
(step.batch_pass: 161 blocks and 1,671 variables once its own callees are inlined), and that copying was
1.2 of the ~9 s that a first fit of [64, 100, 10] spent compiling serial.run_steps (measured on the 2-core
Zen 5 VM, Numba 0.68).

InliningCompiler is Numba's default compiler but for that pass: its inliner gives the callee's scope one
copy per inlined call, shared by all the copied blocks, which is the structure of the IR it copies (one
scope per function: inline_ir itself asserts there is only one). The copies are otherwise Numba's, and so
is the compiled code: the same numbers (tests/cpu/test_inline_pipeline.py; a first fit of [64, 100, 10]
and one of [784, 512, 512, 10] gave the same parameters, bit for bit); only the compile is shorter.
Measured on that VM, a new process on an empty cache, interleaved with the previous commit: the serial
run_steps' inlining pass went from 1.8-2.1 s to 0.65 s, a first fit and predict of [64, 100, 10] from
11.9-13.5 s to 10.7-10.9 s, and a first fit of [784, 512, 512, 10] (the parallel step) from 20.7 s to
18.2 s. Every fastbp function that inlines other functions passes pipeline_class=InliningCompiler to
njit (a test checks it); nothing else in the process is affected.
"""
import copy
import threading

from numba.core import ir
from numba.core.compiler import Compiler, DefaultPassBuilder
from numba.core.compiler_machinery import register_pass
from numba.core.inline_closurecall import InlineWorker
from numba.core.untyped_passes import InlineInlinables

_copying = threading.local()  # .scopes: {id(scope): (scope, its copy)} while an inline_ir call copies IR


class _SharedCopyScope(ir.Scope):
    """An inlined callee's scope: deep-copied once per inline_ir call, however many blocks refer to it."""

    def __deepcopy__(self, memo):
        scopes = getattr(_copying, "scopes", None)
        if scopes is not None and id(self) in scopes:
            return scopes[id(self)][1]
        new = _SharedCopyScope.__new__(_SharedCopyScope)
        memo[id(self)] = new  # the variables it holds refer back to it
        if scopes is not None:
            scopes[id(self)] = (self, new)  # self is kept alive, so its id is not reused meanwhile
        for name, value in self.__dict__.items():
            setattr(new, name, copy.deepcopy(value, memo))
        return new


class _Worker(InlineWorker):
    """InlineWorker whose callees' scopes are copied once per inlined call, and whose callees are compiled
    by this module's untyped pipeline (their own inlining included)."""

    def run_untyped_passes(self, func, enable_ssa=False):
        func_ir = super().run_untyped_passes(func, enable_ssa)
        for block in func_ir.blocks.values():
            if type(block.scope) is ir.Scope:
                block.scope.__class__ = _SharedCopyScope  # the same object for every block of the function
        return func_ir

    def inline_ir(self, caller_ir, block, i, callee_ir, callee_freevars, arg_typs=None):
        outer = getattr(_copying, "scopes", None)
        _copying.scopes = {}
        try:
            return super().inline_ir(caller_ir, block, i, callee_ir, callee_freevars, arg_typs)
        finally:
            _copying.scopes = outer


@register_pass(mutates_CFG=True, analysis_only=False)
class _InlineInlinables(InlineInlinables):
    """Numba's InlineInlinables with _Worker as its inliner."""
    _name = "fastbp_inline_inlinables"

    def _do_work(self, state, work_list, block, i, expr, inline_worker):
        if type(inline_worker) is InlineWorker:
            inline_worker.__class__ = _Worker  # run_pass builds a plain InlineWorker; this pass uses _Worker
            inline_worker._compiler_pipeline = _untyped_pipeline
        return super()._do_work(state, work_list, block, i, expr, inline_worker)


def _swap_inliner(pm):
    """pm (a PassManager) with _InlineInlinables in place of InlineInlinables; exactly one is replaced."""
    replaced = [(_InlineInlinables if cls is InlineInlinables else cls, what) for cls, what in pm.passes]
    if sum(cls is InlineInlinables for cls, _ in pm.passes) != 1:
        raise RuntimeError("Numba's pipeline no longer has one InlineInlinables pass: update inline_pipeline.py")
    pm.passes = replaced
    return pm


def _untyped_pipeline(state, name="untyped"):
    return _swap_inliner(DefaultPassBuilder.define_untyped_pipeline(state, name))


class InliningCompiler(Compiler):
    """Numba's default compiler (nopython mode) with _InlineInlinables."""

    def define_pipelines(self):
        if self.state.flags.force_pyobject:
            return super().define_pipelines()
        return [_swap_inliner(DefaultPassBuilder.define_nopython_pipeline(self.state))]
