"""Where one CPU training step's time goes: each fused piece timed on its own, per layer.

For each benchmark workload this calls the pieces the compiled step inlines (cpu/step.py), each as its
own compiled function on the step's own workspace, in the step's order, and times them (median of many
calls, warm-up excluded). The rows:
    gather         [X[rows], 1] into the first activation block
    forward l      dense + bias + activation of layer l (one SGEMM split among threads, epilogue fused)
    loss           loss and output delta, one pass over the logits
    dW l           layer l's [dW; db] (one product, or per-thread partial products added up)
    delta l        delta propagated back through layer l into layer l - 1 (product + act' epilogue)
    optimizer      the Adam update over the flat buffers
    sum            the pieces added up
    step           the fused step as the Trainer runs it (one compiled call)
FLOP counts: 2 x rows x fan_in x fan_out per product (the bias row left out). Narrow networks over long
batches (tiny) take the per-thread pipeline (cpu/pipeline.py) in the real step instead: its pieces
are listed as the layer-at-a-time kernels would run them, and the step row shows what the pipeline takes.

    python scripts/step_breakdown.py [--workloads tiny mnist ...] [--markdown]
"""
import argparse
import statistics
import time

import numpy as np

from fastbp import Trainer
from fastbp.bench import WORKLOADS, gemm_ceiling, make_batch
from fastbp.cpu.blas import TRANS
from fastbp.cpu.delta_backward import propagate_delta
from fastbp.cpu.dense_forward import activation_offsets, dense_layer, gather_input
from fastbp.cpu.loss_delta import loss_and_delta
from fastbp.cpu.optimizers import optimizer_update
from fastbp.cpu.weight_grad import weight_gradient
from fastbp.options import ACTIVATIONS


def median_time(fn, min_calls=20, min_seconds=0.5):
    """Median seconds of fn() after two warm-up calls (compilation included in those)."""
    fn()
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def breakdown(sizes, batch, loss):
    """[(piece, seconds, flops)] for one step of the workload, the last row the whole fused step."""
    trainer = Trainer(sizes, loss=loss, optimizer="adam", lr=1e-3, batch_size=batch, seed=0)
    X, y = make_batch(sizes, batch, loss)
    trainer.step(X, y)  # compiles the step and builds the batch's workspace
    backend, s = trainer._backend, trainer.state
    ws = backend._workspaces.get(batch)
    rows = np.arange(batch, dtype=np.int64)
    labels = y if loss == "cross_entropy" else np.zeros(0, np.int64)
    targets = y if loss != "cross_entropy" else np.zeros((0, 0), np.float32)
    act, lossc = ACTIVATIONS["relu"], trainer._backend.loss
    dims, offsets, L = s.dims, s.offsets, len(sizes) - 1
    act_off = activation_offsets(dims, batch)
    no_slopes = np.zeros(0, np.float32)  # relu keeps no slope blocks
    settings = trainer._optimizer_settings()
    out = []
    # The pieces as step.run (the parallel entry point) inlines them: the general activation code
    # (relu_only False, slopes and dropout compiled in, thresholds 0).
    with backend._kernel_threads() as threads:
        def block(flat, l):
            return flat[offsets[l]:offsets[l + 1]]

        def acts(l):
            return ws.acts[act_off[l]:act_off[l + 1]]

        out.append(("gather", median_time(lambda: gather_input(X, rows, acts(0), True, 0, 0)), 0))
        for l in range(L):
            ld = sizes[l + 1] + (1 if l < L - 1 else 0)
            fn = (lambda l=l, ld=ld: dense_layer(acts(l), block(s.params, l), batch, sizes[l], sizes[l + 1],
                                                 acts(l + 1), ld, no_slopes, act if l < L - 1 else 0, l, False, True,
                                                 True, 0, 0, threads))
            out.append((f"forward {l}", median_time(fn), 2 * batch * sizes[l] * sizes[l + 1]))
        logits = acts(L)
        # The loss overwrites the logits with the delta: time it on a fresh copy of the logits each call.
        saved = logits.copy()

        def loss_piece():
            logits[:] = saved
            loss_and_delta(logits, batch, sizes[-1], labels, targets, np.zeros(0), float(batch), rows, lossc,
                           lossc.kind, logits, ws.row_loss, ws.row_hits, True)
        copy_s = median_time(lambda: logits.__setitem__(slice(None), saved))
        out.append(("loss", max(median_time(loss_piece) - copy_s, 0.0), 0))
        # Backward pieces in the step's order, each repeated on its own. Repeats of a delta propagation read
        # the delta it wrote over A_{l-1} as the activation whose derivative it takes: other values, the
        # same work (the act' mask costs the same whatever its pattern).
        for l in range(L - 1, -1, -1):
            ld_delta = sizes[l + 1] if l == L - 1 else sizes[l + 1] + 1
            fn = (lambda l=l, ld_delta=ld_delta: weight_gradient(
                acts(l), acts(l + 1), ld_delta, batch, sizes[l], sizes[l + 1], block(s.grads, l), ws.partials,
                threads))
            out.append((f"dW {l}", median_time(fn), 2 * batch * sizes[l] * sizes[l + 1]))
            if l > 0:
                fn = (lambda l=l, ld_delta=ld_delta: propagate_delta(
                    acts(l + 1), ld_delta, block(s.params, l), TRANS, acts(l), no_slopes, batch, sizes[l], sizes[l + 1],
                    act, l - 1, False, True, True, 0, 0, ws.scratch, threads))
                out.append((f"delta {l}", median_time(fn), 2 * batch * sizes[l] * sizes[l + 1]))
        out.append(("optimizer", median_time(lambda: optimizer_update(s.params, s.grads, s.moment1, s.moment2,
                                                                     settings, np.float32(1.0), settings.kind)), 0))
    total = sum(t for _, t, _ in out)
    out.append(("sum", total, sum(f for _, _, f in out)))
    out.append(("step", median_time(lambda: trainer.step(X, y)), 0))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (for the README)")
    args = parser.parse_args()
    ceiling = gemm_ceiling()
    print(f"GEMM ceiling (NumPy float32 4096^3): {ceiling:.0f} GFLOP/s")
    for name in args.workloads:
        w = WORKLOADS[name]
        rows = breakdown(w["sizes"], w["batch"], w["loss"])
        step_s = rows[-1][1]
        print(f"\n{name} {w['sizes']} batch {w['batch']}")
        if args.markdown:
            print("| piece | ms | share of step | GFLOP/s |\n|---|---:|---:|---:|")
        for piece, t, flops in rows:
            rate = f"{flops / t / 1e9:.0f}" if flops and t > 0 else ""
            if args.markdown:
                print(f"| {piece} | {t * 1e3:.3f} | {t / step_s:.0%} | {rate} |")
            else:
                print(f"  {piece:<10} {t * 1e3:9.3f} ms {t / step_s:6.0%} {rate:>6}")


if __name__ == "__main__":
    main()
