"""The test suite's power, measured: deliberate bugs (mutants) applied one at a time, each must make tests fail.

    python scripts/mutation_check.py              # every mutant; prints a table, exits 1 if any survived
    python scripts/mutation_check.py --list       # the mutants and the tests each one runs
    python scripts/mutation_check.py --only adam_bias_correction clip_norm_formula

Each mutant replaces one exact piece of source text (it must occur exactly once) in a file, clears Numba's
on-disk cache (which does not see edits to inlined callees), runs the tests that guard that piece with
`pytest -x`, and restores the file, also on Ctrl-C. A mutant is killed when pytest fails; survived when
it passes. Run it in a clean checkout: it edits files in place (and restores them).
"""
import argparse
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

# (name, file, original text, mutated text, pytest arguments): the bug, and the tests that must catch it.
MUTANTS = [
    # ---- reference (the executable spec) ----
    ("reference_tanh_derivative", "fastbp/reference.py", "        return 1 - np.tanh(z) ** 2\n",
     "        return 1 - np.tanh(z)\n",
     ["tests/test_reference.py"]),
    # ---- CPU kernels ----
    ("cpu_tanh_vector_poly", "fastbp/cpu/vector_math.py", "    p = p * z - np.float32(5.37397155531e-2)\n",
     "    p = p * z - np.float32(5.37397155531e-3)\n", ["tests/cpu/test_vector_math.py"]),
    ("cpu_exp_split_ln2", "fastbp/cpu/vector_math.py", "    r = xc - n * _LN2_HI - n * _LN2_LO\n",
     "    r = xc - n * _LN2_HI\n", ["tests/cpu/test_vector_math.py"]),
    ("cpu_tanh_derivative", "fastbp/cpu/activations.py",
     "a[j] = d[j] * (np.float32(1.0) - a[j] * a[j])", "a[j] = d[j] * (np.float32(1.0) - a[j])",
     ["tests/cpu/test_kernels.py", "-k", "loss_gradients and tanh"]),
    ("cpu_leaky_slope", "fastbp/cpu/activations.py",
     "a[j] = d[j] if a[j] > 0 else d[j] * np.float32(SLOPE)", "a[j] = d[j] if a[j] > 0 else np.float32(0.0)",
     ["tests/cpu/test_kernels.py", "-k", "loss_gradients and leaky"]),
    ("cpu_delta_tile_bound", "fastbp/cpu/delta_backward.py", "rows = min(TILE_ROWS, r1 - t0)",
     "rows = min(TILE_ROWS, r1 - t0 - 1)", ["tests/cpu/test_kernels.py", "-k", "long_batches"]),
    ("cpu_weight_grad_drops_bias_row", "fastbp/cpu/weight_grad.py",
     "        r0, r1, c0, c1 = 0, fan_in + 1, 0, fan_out\n",
     "        r0, r1, c0, c1 = 0, fan_in, 0, fan_out\n", ["tests/cpu/test_kernels.py", "-k", "loss_gradients"]),
    ("cpu_cross_entropy_scale", "fastbp/cpu/loss_delta.py",
     "return 1.0 / weight_total if loss.kind == CROSS_ENTROPY else 1.0 / (weight_total * m)",
     "return 1.0 / weight_total if loss.kind == CROSS_ENTROPY else 1.0 / weight_total",
     ["tests/cpu/test_kernels.py", "-k", "loss_gradients and mse"]),
    ("clip_norm_formula", "fastbp/cpu/optimizers.py", "max_norm / (np.sqrt(total) + 1e-6)",
     "max_norm / (total + 1e-6)", ["tests/cpu/test_kernels.py", "-k", "several_updates and clip"]),
    # ---- optimizer rules (shared by CPU and CUDA) ----
    ("adam_bias_correction", "fastbp/update_rules.py", "inv_sqrt_bc2 = 1.0 / math.sqrt(1.0 - settings.beta2 ** settings.step)",
     "inv_sqrt_bc2 = 1.0 / math.sqrt(1.0 - settings.beta2 ** (settings.step + 1))",
     ["tests/cpu/test_kernels.py", "-k", "several_updates and adam"]),
    ("rmsprop_without_one_minus_alpha", "fastbp/update_rules.py",
     "m1 = alpha * m1 + one_minus_alpha * g * g", "m1 = alpha * m1 + g * g",
     ["tests/cpu/test_kernels.py", "-k", "several_updates and rmsprop"]),
    ("adagrad_half_lr", "fastbp/update_rules.py", "return p - lr * g / (math.sqrt(m1) + eps), m1, m2",
     "return p - 0.5 * lr * g / (math.sqrt(m1) + eps), m1, m2",
     ["tests/cpu/test_kernels.py", "-k", "several_updates and adagrad"]),
    ("adagrad_default_eps", "fastbp/options.py", 'DEFAULT_EPS = {"adagrad": 1e-10}', 'DEFAULT_EPS = {"adagrad": 1e-8}',
     ["tests/test_torch.py", "-k", "pytorchs_own"]),
    # ---- CUDA kernels (on the simulator) ----
    ("cuda_reduce_barrier_skipped", "fastbp/cuda/reduce.py",
     "                partial_y[tid] += partial_y[tid + stride]\n            cuda.syncthreads()\n",
     "                partial_y[tid] += partial_y[tid + stride]\n",
     ["tests/cuda/test_cuda_backend.py", "-k", "float64_reference or optimizers"]),
    ("cuda_tanh_derivative", "fastbp/cuda/device_math.py", "return float32(1.0) - a * a", "return float32(1.0) - a",
     ["tests/cuda/test_cuda_backend.py", "-k", "float64_reference and tanh"]),
    # ---- data checks ----
    ("label_range_check_skipped", "fastbp/validation.py", "if (labels.view(np.uint64) >= n_classes).any():",
     "if False:", ["tests/test_validation.py"]),
    ("nan_check_skipped", "fastbp/validation.py", "    if arr.dtype.kind != \"f\":\n        return\n",
     "    return\n", ["tests/test_validation.py"]),
    ("blas_not_pinned", "fastbp/threads.py", "lib.set_num_threads(1)", "lib.set_num_threads(lib.num_threads)",
     ["tests/test_validation.py", "-k", "single_threaded_while"]),
    # ---- the training loop ----
    ("load_drops_schedule", "fastbp/trainer.py", 't.schedule = meta["schedule"]', "t.schedule = None",
     ["tests/test_training_loop.py", "-k", "resume"]),
    ("predict_applies_dropout", "fastbp/cpu/backend.py", "        self._run(step.FORWARD, X, None, None, rows)\n",
     "        self._run(step.FORWARD, X, None, None, rows, None, 12345, 8388608)\n",
     ["tests/cpu/test_kernels.py", "-k", "no_dropout"]),
    ("skipped_step_counts", "fastbp/trainer.py", "                self._raise_non_finite_loss(loss)\n",
     "                self.state.step_count += 1\n                self._raise_non_finite_loss(loss)\n",
     ["tests/cpu/test_kernels.py", "-k", "skipped_adam"]),
    ("step_decay_off_by_one", "fastbp/schedules.py", "base_lr * self.gamma ** (count // self.step_size)",
     "base_lr * self.gamma ** (count // self.step_size + 1)", ["tests/test_training_loop.py", "-k", "schedule"]),
    ("model_checkpoint_saves_every_epoch", "fastbp/callbacks.py",
     "            if not improved(current, self.best, self.mode, 0.0):\n                return\n",
     "            if not improved(current, self.best, self.mode, 0.0):\n                pass\n",
     ["tests/test_training_loop.py", "-k", "model_checkpoint"]),
    ("normal_init", "fastbp/state.py", "W[...] = rng.uniform(-limit, limit, size=W.shape)",
     "W[...] = rng.normal(0.0, limit / np.sqrt(3.0), size=W.shape)", ["tests/test_trainer.py", "-k", "uniform"]),
    # ---- checkpoints ----
    ("load_forgets_step_count", "fastbp/trainer.py",
     's.step_count, t.epochs_done, t._dropout_seed = meta["step_count"], meta["epochs_done"], meta["dropout_seed"]',
     's.step_count, t.epochs_done, t._dropout_seed = 0, meta["epochs_done"], meta["dropout_seed"]',
     ["tests/test_checkpoint.py"]),
    # ---- estimators ----
    ("estimator_alpha_unscaled", "fastbp/estimators.py", "self.alpha / (scale * batch * mean_weight) if stochastic",
     "self.alpha / (scale * mean_weight) if stochastic",
     ["tests/test_estimators.py", "-k", "beyond"]),
    ("estimator_patience", "fastbp/estimators.py", "if self.no_improvement > est.n_iter_no_change:",
     "if self.no_improvement >= est.n_iter_no_change:", ["tests/test_estimators.py", "-k", "tol_and"]),
    # ---- MPI, micro-batches, memory-mapped data ----
    ("mpi_share_weight_dropped", "fastbp/trainer.py", "            grads *= np.float32(share)\n",
     "            grads *= np.float32(1.0)\n", ["tests/test_micro_batches.py", "-k", "equal_unchunked or pipeline"]),
    ("micro_batch_masks_not_offset", "fastbp/trainer.py", "offset_key(key, first + start)", "offset_key(key, first)",
     ["tests/test_micro_batches.py", "-k", "equal_unchunked"]),
    ("mpi_initial_weights_not_broadcast", "fastbp/trainer.py", "        self.state.params[:] = params\n",
     "        pass\n", ["tests/test_distributed.py", "-k", "estimator"]),
    ("memory_mapped_rows_out_of_order", "fastbp/sources.py", "            X[order] = self.X[in_file_order]\n",
     "            X[:] = self.X[in_file_order]\n", ["tests/test_sources.py", "-k", "same_data_in_memory"]),
    # ---- this round's model features ----
    ("gelu_slope_dropped_term", "fastbp/cpu/activations.py",
     "return v * phi, phi + v * np.exp(np.float32(-0.5) * v * v) * _INV_SQRT_2PI", "return v * phi, phi",
     ["tests/cpu/test_kernels.py", "-k", "loss_gradients and gelu"]),
    ("silu_slope_from_output", "fastbp/cpu/delta_backward.py", "                a[j] = d[j] * slope[j]\n",
     "                a[j] = d[j]\n", ["tests/cpu/test_kernels.py", "-k", "loss_gradients and silu"]),
    ("cuda_slope_not_stored", "fastbp/cuda/gemm.py", "            aux[r * ld_aux + col] = dm.slope(v, activation)\n",
     "            aux[r * ld_aux + col] = float32(1.0)\n",
     ["tests/cuda/test_cuda_backend.py", "-k", "whole_adam and general and gelu"]),
    ("per_layer_activation_shifted", "fastbp/cpu/step.py", "                            activations[l - 1], l - 1,",
     "                            activations[l], l - 1,", ["tests/cpu/test_kernels.py", "-k", "loss_gradients and mixed"]),
    ("input_dropout_unscaled", "fastbp/cpu/dense_forward.py", "a0_row[j] = X[src, j] * inv_keep if keeps(",
     "a0_row[j] = X[src, j] if keeps(", ["tests/test_training_loop.py", "-k", "input_dropout"]),
    ("max_norm_not_applied", "fastbp/cpu/max_norm.py", "        scales[j] = max_norm / norm if norm > max_norm else 1.0\n",
     "        scales[j] = 1.0\n", ["tests/cpu/test_kernels.py", "-k", "several_updates and max_norm"]),
    ("huber_not_clamped", "fastbp/cpu/loss_delta.py", "(diff if inside else (delta if diff > 0 else -delta)) * scale",
     "diff * scale", ["tests/cpu/test_kernels.py", "-k", "loss_gradients and huber"]),
    ("label_smoothing_delta_unspread", "fastbp/cpu/loss_delta.py", "        spread = np.float32(smoothing / m * scale)\n",
     "        spread = np.float32(0.0)\n", ["tests/cpu/test_kernels.py", "-k", "loss_gradients and smoothed"]),
    ("small_gemm_drops_a_term", "fastbp/cpu/blas.py", "+ (a2 * b[b2 + _u(j)] + a3 * b[b3 + _u(j)])",
     "+ a2 * b[b2 + _u(j)]", ["tests/cpu/test_kernels.py", "-k", "gemm"]),
    ("small_gemm_rank_one_drops_beta", "fastbp/cpu/blas.py",
     "c[c_row + _u(j)] = beta * c[c_row + _u(j)] + av * b[_u(j * b_step)]",
     "c[c_row + _u(j)] = av * b[_u(j * b_step)]", ["tests/cpu/test_kernels.py", "-k", "gemm"]),
    ("cross_entropy_rows_unshifted_label", "fastbp/cpu/loss_delta.py",
     "(np.float64(row[label]) - np.float64(zmax))", "np.float64(row[label])",
     ["tests/cpu/test_kernels.py", "-k", "cross_entropy_blocks"]),
    ("inliner_copies_the_scope_per_block", "fastbp/cpu/inline_pipeline.py", "        _copying.scopes = {}\n",
     "        _copying.scopes = None\n", ["tests/cpu/test_inline_pipeline.py"]),
    ("delta_product_skips_the_copy", "fastbp/cpu/step.py", "                transpose_into(block, fan_in, fan_out, w)\n",
     "", ["tests/cpu/test_weight_copies.py", "-k", "rounding_alone"]),
    ("transpose_drops_the_last_rows", "fastbp/cpu/blas.py", "    for i in range(full_rows, rows):  # the last rows\n",
     "    for i in range(full_rows, full_rows):  # the last rows\n", ["tests/cpu/test_weight_copies.py", "-k", "transpose_into"]),
    ("transpose_shuffle_swaps_two_lanes", "fastbp/cpu/blas.py", "[0, 8, 1, 9, 4, 12, 5, 13]",
     "[0, 8, 1, 9, 4, 12, 13, 5]", ["tests/cpu/test_weight_copies.py", "-k", "transpose_into"]),
    ("alone_never_starts_over", "fastbp/cpu/backend.py", "                    self._alone_seconds = 0.0\n",
     "                    pass\n", ["tests/cpu/test_split_steps.py", "-k", "time_alone"]),
    ("finite_check_reads_the_first_block", "fastbp/validation.py", "for i in range(0, flat.size, _CHECK_BLOCK))",
     "for i in range(0, _CHECK_BLOCK, _CHECK_BLOCK))", ["tests/test_validation.py", "-k", "check_finite_finds"]),
    # ---- the serial entry point's variants (serial.Uses) ----
    ("serial_relu_derivative_at_zero", "fastbp/cpu/delta_backward.py",
     "            a[j] = d[j] if a[j] > 0 else np.float32(0.0)\n",
     "            a[j] = d[j] if a[j] >= 0 else np.float32(0.0)\n",
     ["tests/cpu/test_variants.py", "-k", "generic_variants and relu"]),
    ("short_batch_own_layout", "fastbp/cpu/serial.py",
     "                                       part_rows, (act_off, slope_off, weight_t_off),",
     "                                       hi - lo, (activation_offsets(dims, hi - lo), slope_offsets(dims, "
     "activations, hi - lo, activation_offsets(dims, hi - lo)[-1]), weight_t_off),",
     ["tests/test_chunked_loop.py", "-k", "whole_epochs_at_once and short"]),
    ("split_update_drops_a_part", "fastbp/cpu/serial.py", "                        grads[i] += extra[i]\n",
     "                        grads[i] += 0.0\n",
     ["tests/cpu/test_split_steps.py", "-k", "one_part_path"]),
    ("split_update_skips_its_wait", "fastbp/cpu/serial.py",
     "            if not wait_for(claims, GRADS_DONE, (s + 1) * parts):\n",
     "            if not wait_for(claims, GRADS_DONE, (s + 1) * parts - 1):\n",
     ["tests/cpu/test_split_steps.py", "-k", "threads_running"]),
    ("grouped_epochs_skip_squares", "fastbp/cpu/serial.py",
     "                epoch_squares[s] = squared_weights(params, offsets, dims)\n",
     "                epoch_squares[s] = 0.0\n",
     ["tests/test_estimators.py", "-k", "several_epochs_per_call"]),
    ("serial_variant_skips_max_norm", "fastbp/cpu/serial.py", "            if constrained:\n",
     "            if False:\n",
     ["tests/cpu/test_kernels.py", "-k", "several_updates and max_norm"]),
    ("class_weight_ignored", "fastbp/class_weights.py", "    weights = table[classes]\n",
     "    weights = np.ones(classes.size)\n", ["tests/test_class_weights.py"]),
]

def clear_numba_cache():
    for pattern in ("*.nbi", "*.nbc"):
        for path in (ROOT / "fastbp").rglob(pattern):
            path.unlink()


def run_mutant(name, relative, original, mutated, test_args, timeout):
    """'killed', 'survived', or 'timed out' (a hang counts as caught: the suite would not pass). A test
    selection that collects nothing is an error, not a kill."""
    path = ROOT / relative
    source = path.read_text()
    if source.count(original) != 1:
        raise SystemExit(f"{name}: the text to mutate occurs {source.count(original)} times in {relative}")
    try:
        path.write_text(source.replace(original, mutated))
        clear_numba_cache()
        try:
            done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *test_args],
                                  cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timed out"
        if done.returncode == 5:
            raise SystemExit(f"{name}: pytest {' '.join(test_args)} collected no tests")
        return "survived" if done.returncode == 0 else "killed"
    finally:
        path.write_text(source)
        clear_numba_cache()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants only")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutant's tests")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m[0] in args.only]
    if args.list:
        for name, relative, _, _, tests in chosen:
            print(f"{name:36s} {relative:30s} {' '.join(tests)}")
        return 0
    survivors = []
    print(f"{'mutant':36s} {'file':30s} {'result':10s} seconds")
    for name, relative, original, mutated, tests in chosen:
        start = time.perf_counter()
        result = run_mutant(name, relative, original, mutated, tests, args.timeout)
        print(f"{name:36s} {relative:30s} {result:10s} {time.perf_counter() - start:6.0f}", flush=True)
        if result == "survived":
            survivors.append(name)
    print(f"\n{len(chosen) - len(survivors)} of {len(chosen)} mutants killed"
          + (f"; survived: {', '.join(survivors)}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
