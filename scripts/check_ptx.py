"""Compiles every CUDA kernel to PTX for a real GPU target, without needing a GPU, and checks it.

    python scripts/check_ptx.py [--cc 9.0] [--show]

Needs the CUDA target with NVVM (pip install 'fastbp[cuda]'); must run without NUMBA_ENABLE_CUDASIM.
Checks that the GEMM and the fused narrow-network kernel stage their tiles in shared memory with barriers,
that no kernel spills to local memory, and prints each kernel's shared-memory and register-array
footprint. Exit status 0 when all kernels compile and pass, 1 on a failed check, 77 when the CUDA
compiler is not installed.
"""
import argparse
import os
import re
import sys


def kernels():
    """(name, python function, signature, expectations) for every kernel the CUDA backend launches."""
    from numba import types
    from fastbp.cuda import device_data, fused_mlp, gemm, reduce
    from fastbp.cuda.gather import gather_input
    from fastbp.cuda.loss_delta import clear_weightless_rows, loss_and_delta
    from fastbp.cuda.optimizers import apply_max_norm, optimizer_update
    from fastbp.cuda.weight_grad import sum_partials
    i8, f4, f8, b1 = types.int64, types.float32, types.float64, types.boolean
    v4, vi8, v8 = types.Array(f4, 1, "C"), types.Array(i8, 1, "C"), types.Array(f8, 1, "C")
    gemm_kernel, _ = gemm.make_gemm(*gemm.PRODUCTION_TILES)
    return [
        ("gemm", gemm_kernel.py_func,
         (i8, i8, i8, i8, i8, v4, i8, v4, i8, v4, i8, i8, i8, v4, i8, i8, i8, i8, i8, i8), {"shared": True}),
        ("fused_mlp", fused_mlp.make_fused(*fused_mlp.PRODUCTION_TILES).py_func,
         (v4, vi8, i8, vi8, vi8, i8, v4, v4, v4, vi8, v4, vi8, v4, vi8, vi8, v4, v8, b1, f8, i8, f8, f8, vi8, v8, v8,
          i8, i8, i8, i8),
         {"shared": True}),
        ("transpose_weights", fused_mlp.transpose_weights.py_func, (v4, vi8, vi8, i8, v4), {}),
        ("sum_partials", sum_partials.py_func, (v4, i8, i8, v4), {}),
        ("first_bad_value", device_data._first_bad_value.py_func, (v4, f8, f8, vi8), {}),
        ("first_bad_label", device_data._first_bad_label.py_func, (vi8, i8, vi8), {}),
        ("loss_and_delta", loss_and_delta.py_func, (v4, i8, i8, vi8, v4, v8, b1, f8, vi8, i8, f8, f8, v8, v8, b1),
         {}),
        ("clear_weightless_rows", clear_weightless_rows.py_func, (v4, vi8, v4, vi8, v4, vi8, vi8, i8, i8, v8, vi8),
         {}),
        ("sums", reduce.make_sums(256).py_func, (v8, v8, v8, b1), {"shared": True}),
        ("gather_input", gather_input.py_func, (v4, i8, vi8, v4, i8, i8), {}),
        ("optimizer_update", optimizer_update.py_func,
         (v4, v4, v4, v4, i8, f4, f4, f4, b1, f4, f4, f4, f4, f4, f4, f4, f4, f4, f4, f8, v8, v8, b1, vi8, vi8),
         {}),
        ("apply_max_norm", apply_max_norm.py_func, (v4, i8, i8, i8, f8, v8), {}),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cc", default="9.0", help="compute capability to compile for (default 9.0, H100)")
    parser.add_argument("--show", action="store_true", help="print the PTX")
    args = parser.parse_args()
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        print("unset NUMBA_ENABLE_CUDASIM: the simulator cannot compile PTX", file=sys.stderr)
        return 1
    try:
        from numba import cuda
        cuda.compile_ptx  # noqa: B018 - the attribute exists only with the CUDA target
        from cuda.bindings import nvvm  # noqa: F401 - NVVM, shipped by numba-cuda[cu13]
    except (ImportError, AttributeError) as exc:
        print(f"the CUDA compiler is not installed ({exc}): pip install 'fastbp[cuda]'", file=sys.stderr)
        return 77
    cc = tuple(int(x) for x in args.cc.split("."))
    failures = 0
    for name, fn, sig, expect in kernels():
        try:
            ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
        except Exception as exc:  # report every kernel, not just the first failure
            print(f"FAIL {name}: does not compile for sm_{cc[0]}{cc[1]}: {exc}")
            failures += 1
            continue
        shared = sum(int(n) for n in re.findall(r"\.shared[^\n;]*\[(\d+)\]", ptx))
        local = re.findall(r"\.local[^\n;]*\[(\d+)\]", ptx)
        problems = []
        if expect.get("shared") and (not shared or "bar.sync" not in ptx):
            problems.append("expected shared-memory tiles and bar.sync barriers")
        if local:
            problems.append(f"local-memory arrays (register spills): {local} bytes")
        status = "FAIL" if problems else "ok  "
        print(f"{status} {name}: sm_{cc[0]}{cc[1]}, {len(ptx.splitlines())} PTX lines, {shared} bytes shared, "
              f"{'bar.sync' if 'bar.sync' in ptx else 'no barrier'}" + (f"; {'; '.join(problems)}" if problems else ""))
        failures += bool(problems)
        if args.show:
            print(ptx)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
