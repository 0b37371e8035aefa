"""GPU benchmark: fastbp device="cuda" against PyTorch CUDA eager, side by side, with a correctness check.

    python scripts/bench_cuda.py                      # the five shared workloads + the narrow ones
    python scripts/bench_cuda.py --narrow-only --batches 16 18 20

For each workload: the same initial weights and batch (PyTorch CUDA tensors, which fastbp reads in place
through __cuda_array_interface__), warm-up excluded, contenders interleaved round by round (10 steps
each per round), median step time with the device synchronised; samples/s, GFLOP/s
(6 x batch x sum(fan_in x fan_out) per step) and the ratio to PyTorch with TF32 off (like for like,
float32) and on. Narrow networks also time fastbp's general path (fastbp_general) beside the fused one.
The first-step losses of fastbp and PyTorch (TF32 off) must agree to 1e-4.
Needs an NVIDIA GPU, numba-cuda and a CUDA build of PyTorch.
"""
import argparse
import statistics
import sys
import time

import numpy as np

from fastbp import sources
from fastbp.bench import WORKLOADS, make_batch, step_flops
from fastbp.cuda.fused_mlp import fits as fused_fits

NARROW = {"narrow64": [32, 64, 64, 64, 64, 16], "narrow128": [32, 128, 128, 128, 16]}


def timed_interleaved(steps, sync, rounds, per_round):
    """{name: median seconds per step}: each round runs every contender per_round steps in turn."""
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            step.before()
            for _ in range(per_round):
                sync()
                t = time.perf_counter()
                step()
                sync()
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


class Contender:
    """A step function and what must hold while it runs (PyTorch's TF32 switch is global)."""

    def __init__(self, step, before=lambda: None):
        self.step, self.before = step, before

    def __call__(self):
        return self.step()


def run(name, sizes, batch, loss, rounds, per_round=10, warmup=3, torch_device="cuda"):
    import torch
    from numba import cuda

    import fastbp
    from fastbp import peers
    from fastbp.cuda.backend import CudaBackend
    X, y = make_batch(sizes, batch, loss)
    xt, yt = torch.from_numpy(X).to(torch_device), torch.from_numpy(y).to(torch_device)
    order = np.arange(batch, dtype=np.int64)
    rows = order[:batch]  # a slice of the "epoch order", as in fit: uploaded once
    contenders, first = {}, {}
    paths = [True, False] if fused_fits(sizes) else [False]
    for fused in paths:
        trainer = fastbp.Trainer(sizes, loss=loss, batch_size=batch, device="cuda", seed=0)
        params = trainer.params  # the same (seeded) start for every contender
        trainer._backend = CudaBackend(trainer.config, trainer.state, fused=fused)
        # The PyTorch tensors themselves, through __cuda_array_interface__: no copy, checked on the device.
        data = sources.InMemory(*trainer._checked(xt, yt))
        label = "fastbp" if fused == paths[0] else "fastbp_general"
        contenders[label] = Contender(lambda t=trainer, d=data: t._train_rows(d, rows)[0])
        first[label] = contenders[label]()
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        _, model = peers.torch_peer(trainer.config, params)
        model.to(torch_device)
        step = _torch_cuda_step(torch, model, trainer.config, loss)
        label = "torch_tf32" if tf32 else "torch"
        contenders[label] = Contender(lambda s=step: s(xt, yt),
                                      lambda v=tf32: setattr(torch.backends.cuda.matmul, "allow_tf32", v))
        contenders[label].before()
        first[label] = contenders[label]()
    for contender in contenders.values():  # warm-up, excluded from the timing
        contender.before()
        for _ in range(warmup):
            contender()
    results = timed_interleaved(contenders, cuda.synchronize, rounds, per_round)
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
    parser.add_argument("--smoke", action="store_true",
                        help="check the script itself on tiny sizes under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) "
                             "with PyTorch on the CPU; its timings mean nothing")
    args = parser.parse_args()
    if args.smoke:
        return 0 if run("smoke", [3, 5, 2], 8, "cross_entropy", rounds=1, per_round=1, warmup=1,
                        torch_device="cpu") else 1
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
