"""GPU benchmark: fastbp device="cuda" against PyTorch CUDA eager, side by side, with a correctness check.

    python scripts/bench_cuda.py                      # the five shared workloads + the narrow ones
    python scripts/bench_cuda.py --narrow-only --batches 16 18 20

For each workload: the same initial weights and batch (already on the GPU for both), warm-up excluded,
rounds interleaved, median step time with the device synchronised; samples/s, GFLOP/s
(6 x batch x sum(fan_in x fan_out) per step) and the ratio to PyTorch with TF32 off (like for like,
float32) and on; the first-step losses of fastbp and PyTorch (TF32 off) must agree to 1e-4.
Needs an NVIDIA GPU, numba-cuda and a CUDA build of PyTorch.
"""
import argparse
import statistics
import sys
import time

import numpy as np

from fastbp.bench import WORKLOADS, make_batch, step_flops

NARROW = {"narrow64": [32, 64, 64, 64, 64, 16], "narrow128": [32, 128, 128, 128, 16]}


def timed(step, sync, rounds, per_round):
    times = []
    for _ in range(rounds):
        for _ in range(per_round):
            sync()
            t = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(name, sizes, batch, loss, rounds):
    import torch
    from numba import cuda

    import fastbp
    from fastbp import peers
    X, y = make_batch(sizes, batch, loss)
    trainer = fastbp.Trainer(sizes, loss=loss, batch_size=batch, device="cuda", seed=0)
    params = trainer.params
    # Validated once and kept on the device, as fit does: the timed step copies only the row indices.
    Xc, labels, targets = trainer._checked(X, y)
    rows = np.arange(batch, dtype=np.int64)

    def fast_step():
        return trainer._train_rows(Xc, labels, targets, rows)

    results = {}
    first = {"fastbp": fast_step()}
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        _, model = peers.torch_peer(trainer.config, params)
        model.cuda()
        opt_step = _torch_cuda_step(torch, model, trainer.config, loss)
        xt = torch.from_numpy(X).cuda()
        yt = torch.from_numpy(y).cuda()
        label = "torch_tf32" if tf32 else "torch"
        first[label] = opt_step(xt, yt)
        for _ in range(3):
            opt_step(xt, yt)
        results[label] = timed(lambda: opt_step(xt, yt), torch.cuda.synchronize, rounds, 10)
    for _ in range(3):
        fast_step()
    results["fastbp"] = timed(fast_step, cuda.synchronize, rounds, 10)
    flops = step_flops(sizes, batch)
    agree = abs(first["fastbp"] - first["torch"]) / max(abs(first["torch"]), 1e-30)
    print(f"{name:<15} batch {batch:>8}  " + "  ".join(
        f"{k} {batch / v:12,.0f} samples/s {flops / v / 1e9:8.1f} GFLOP/s" for k, v in results.items())
        + f"  fastbp x torch {results['torch'] / results['fastbp']:.2f}  x torch_tf32 "
        f"{results['torch_tf32'] / results['fastbp']:.2f}  first-loss rel diff {agree:.1e}"
        + ("" if agree < 1e-4 else "  MISMATCH"), flush=True)
    return agree < 1e-4


def _torch_cuda_step(torch, model, config, loss):
    """A step on tensors already on the GPU (peers.torch_peer's step takes NumPy arrays)."""
    loss_fn = {"mse": torch.nn.MSELoss(), "cross_entropy": torch.nn.CrossEntropyLoss(),
               "bce": torch.nn.BCEWithLogitsLoss()}[loss]
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas, eps=config.eps)

    def step(xt, yt):
        opt.zero_grad(set_to_none=True)
        value = loss_fn(model(xt), yt)
        value.backward()
        opt.step()
        return value.item()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--narrow-only", action="store_true")
    parser.add_argument("--batches", type=int, nargs="*", default=[14, 16, 18, 21],
                        help="log2 batch sizes for the narrow workloads (default 14 16 18 21)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    try:
        from numba import cuda
        import torch
        if not (cuda.is_available() and torch.cuda.is_available()):
            raise RuntimeError("no CUDA GPU visible to both numba-cuda and PyTorch")
    except (ImportError, RuntimeError) as exc:
        print(f"bench_cuda needs an NVIDIA GPU, numba-cuda and a CUDA build of PyTorch: {exc}", file=sys.stderr)
        return 2
    ok = True
    if not args.narrow_only:
        for name, w in WORKLOADS.items():
            ok &= run(name, w["sizes"], w["batch"], w["loss"], args.rounds)
    for name, sizes in NARROW.items():
        for b in args.batches:
            ok &= run(name, sizes, 2 ** b, "mse", args.rounds)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
