"""Side-by-side training-step benchmark: fastbp against PyTorch (eager with fused Adam, torch.compile of the
whole step), JAX (jit of the whole step) and the NumPy reference, each peer when installed.

All peers start from the same weights and train on the same fixed batch. After warm-up (compilation
included there, and timed separately), rounds of steps are interleaved peer by peer so that machine
drift hits every peer alike; the figure is the median step time. FLOPs per step are counted as
6 x batch x sum(fan_in x fan_out), and the GEMM ceiling is NumPy's float32 product measured in the same run.
"""
import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time

import numpy as np

WORKLOADS = {
    "tiny": dict(sizes=[32, 64, 64, 64, 64, 16], batch=16384, loss="mse"),
    "mnist": dict(sizes=[784, 800, 10], batch=128, loss="cross_entropy"),
    "mnist_bigbatch": dict(sizes=[784, 800, 10], batch=8192, loss="cross_entropy"),
    "deep": dict(sizes=[256] + [256] * 8 + [10], batch=1024, loss="cross_entropy"),
    "wide": dict(sizes=[1024, 4096, 4096, 1024], batch=2048, loss="mse"),
}


# Idle OpenMP and OpenBLAS workers spin for up to ~0.1 s before sleeping (measured here: a fastbp
# step right after a NumPy round ran 2x slower for about that long).
PAUSE_BETWEEN_PEERS_S = 0.3


def step_flops(sizes, batch):
    """The conventional count: 6 x batch x sum(fan_in x fan_out) (forward, input gradient, weight gradient)."""
    return 6 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def needed_flops(sizes, batch):
    """FLOPs a step has to do: step_flops less the first layer's input gradient, which nobody computes."""
    return step_flops(sizes, batch) - 2 * batch * sizes[0] * sizes[1]


def gemm_ceiling(n=4096, repeats=3):
    """GFLOP/s of NumPy's float32 n x n x n matrix product (median of repeats, after one warm-up)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.copy()
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def make_batch(sizes, batch, loss, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    if loss == "cross_entropy":
        y = rng.integers(0, sizes[-1], batch).astype(np.int64)
    elif loss == "bce":
        y = (rng.random((batch, sizes[-1])) < 0.5).astype(np.float32)
    else:
        y = rng.standard_normal((batch, sizes[-1]), dtype=np.float32)
    return X, y


# Peer name -> PyTorch mode (peers.TORCH_MODES): `torch` is PyTorch eager at its fastest (fused Adam).
TORCH_PEERS = {"torch": "fused", "torch_foreach": "foreach", "torch_compile": "compile"}
ALL_PEERS = ("fastbp", *TORCH_PEERS, "jax", "numpy")
# The default comparison: every peer at its best (the foreach optimizer only on request).
DEFAULT_PEERS = ("fastbp", "torch", "torch_compile", "jax", "numpy")


def build_peers(sizes, batch, loss, activation="relu", peers=DEFAULT_PEERS, threads=None):
    """{name: step(X, y) -> loss} sharing one initial set of weights (peers whose framework is not
    installed are left out, with a message)."""
    from . import peers as peer_impls
    from .trainer import Trainer
    trainer = Trainer(sizes, activation=activation, loss=loss, optimizer="adam", lr=1e-3, batch_size=batch,
                      seed=0)
    params = trainer.params
    steps = {}
    for name in peers:
        if name == "fastbp":
            steps[name] = trainer.step
        elif name in TORCH_PEERS:
            try:
                steps[name] = peer_impls.torch_peer(trainer.config, params, threads=threads,
                                                    mode=TORCH_PEERS[name])[0]
            except ImportError:
                print(f"PyTorch is not installed: skipping the {name} peer", file=sys.stderr)
        elif name == "jax":
            try:
                steps[name] = peer_impls.jax_peer(trainer.config, params)
            except ImportError:
                print("JAX is not installed: skipping the jax peer", file=sys.stderr)
        elif name == "numpy":
            steps[name] = peer_impls.numpy_peer(trainer.config, params).step
        else:
            raise ValueError(f"unknown peer {name!r}; valid: {', '.join(ALL_PEERS)}")
    return steps


def run_workload(name, sizes, batch, loss, peers, rounds=5, seconds_per_round=0.4, threads=None):
    X, y = make_batch(sizes, batch, loss)
    steps = build_peers(sizes, batch, loss, peers=peers, threads=threads)
    first_loss, warmup_s = {}, {}
    for peer, step in steps.items():
        t = time.perf_counter()
        first_loss[peer] = step(X, y)
        warmup_s[peer] = time.perf_counter() - t
        for _ in range(2):
            step(X, y)
    per_round = {}
    for peer, step in steps.items():
        t = time.perf_counter()
        step(X, y)
        per_round[peer] = max(1, min(50, int(seconds_per_round / max(time.perf_counter() - t, 1e-6))))
    samples = {peer: [] for peer in steps}
    for _ in range(rounds):
        for peer, step in steps.items():
            # Let the previous peer's thread pools stop spinning, then re-warm this peer's caches:
            # otherwise each round's first steps measure the neighbour, not the peer.
            time.sleep(PAUSE_BETWEEN_PEERS_S)
            step(X, y)
            for _ in range(per_round[peer]):
                t = time.perf_counter()
                step(X, y)
                samples[peer].append(time.perf_counter() - t)
    flops = step_flops(sizes, batch)
    results = {}
    for peer in steps:
        median = statistics.median(samples[peer])
        results[peer] = {"step_s": median, "samples_per_s": batch / median, "gflops": flops / median / 1e9,
                         "needed_gflops": needed_flops(sizes, batch) / median / 1e9,
                         "first_step_s": warmup_s[peer], "first_loss": first_loss[peer],
                         "steps_timed": len(samples[peer])}
    return results


def _proc_status_bytes(field):
    """VmRSS (resident now) or VmHWM (resident peak) of this process. Not getrusage's ru_maxrss: Linux
    carries that across fork and exec, so a child would report its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def _memory_probe(peer, sizes, batch, loss, steps, queue):
    """In a fresh process: resident memory once the peer's framework is loaded and warm (a small network
    trained a step), and the peak while the peer builds and trains the workload's network."""
    X, y = make_batch([4, 3, 2], 2, loss)
    build_peers([4, 3, 2], 2, loss, peers=(peer,))[peer](X, y)  # imports the framework, loads or compiles
    baseline = _proc_status_bytes("VmRSS")
    X, y = make_batch(sizes, batch, loss)
    step = build_peers(sizes, batch, loss, peers=(peer,))[peer]
    for _ in range(steps):
        step(X, y)
    queue.put((baseline, _proc_status_bytes("VmHWM")))


def peak_memory(peer, sizes, batch, loss, steps=3):
    """What training the workload adds to a process (bytes, peak resident memory above the warm
    framework's), and fastbp's budget: parameters x 4 (weights, gradients, two Adam moments) + one set of
    activations for the batch (input included) + 64 MB."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_probe, args=(peer, sizes, batch, loss, steps, queue))
    proc.start()
    baseline, peak = queue.get()
    proc.join()
    n_params = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
    budget = 4 * n_params * 4 + batch * sum(sizes) * 4 + 64 * 2 ** 20
    return {"used_bytes": peak - baseline, "budget_bytes": budget}


_FIRST_FIT = """
import sys, time
start = time.perf_counter()
import numpy as np
import fastbp
from fastbp.bench import make_batch
sizes, batch, loss = {sizes!r}, {batch!r}, {loss!r}
X, y = make_batch(sizes, 4 * batch, loss)
trainer = fastbp.Trainer(sizes, loss=loss, batch_size=batch, seed=0)
trainer.fit(X, y, epochs=1, validation_data=(X[:batch], y[:batch]), verbose=0)
first_fit = time.perf_counter() - start
"""


def first_fit_seconds(sizes, batch, loss, cache_dir):
    """Seconds for a new process to import fastbp and run a first fit of one epoch (4 batches) with
    validation data, every entry point it needs included, with Numba's on-disk cache in cache_dir."""
    import subprocess
    code = _FIRST_FIT.format(sizes=list(sizes), batch=batch, loss=loss) + "print(first_fit)"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"first-fit probe failed: {run.stderr[-2000:]}")
    return float(run.stdout.split()[-1])


def compile_times(sizes, batch, loss):
    """first_fit_seconds with the kernel cache empty (compilation: what a fresh install pays once) and
    then warm (every later run)."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="fastbp-numba-cache-") as cache_dir:
        cold = first_fit_seconds(sizes, batch, loss, cache_dir)
        return {"cold_s": cold, "warm_s": first_fit_seconds(sizes, batch, loss, cache_dir)}


def loss_agreement(results, against="torch"):
    """Relative difference of fastbp's first-step loss from a peer's (same weights, same batch)."""
    if "fastbp" not in results or against not in results:
        return None
    a, b = results["fastbp"]["first_loss"], results[against]["first_loss"]
    return abs(a - b) / max(abs(b), 1e-30)


def format_table(all_results, ceiling):
    lines = [f"GEMM ceiling (NumPy float32 4096^3, this run): {ceiling:.1f} GFLOP/s", "",
             f"{'workload':<15} {'peer':<14} {'ms/step':>9} {'samples/s':>11} {'GFLOP/s':>8} {'ceiling':>8} "
             f"{'fastbp x':>9} {'1st step s':>10} {'memory MB':>9}"]
    for name, res in all_results.items():
        base = res["peers"].get("fastbp")
        for peer, r in res["peers"].items():
            speedup = r["step_s"] / base["step_s"] if base else float("nan")
            mem = r.get("memory")
            mem_text = f"{mem['used_bytes'] / 2 ** 20:9.0f}" if mem else f"{'':>9}"
            lines.append(f"{name:<15} {peer:<14} {r['step_s'] * 1e3:9.3f} {r['samples_per_s']:11,.0f} "
                         f"{r['gflops']:8.1f} {r['needed_gflops'] / ceiling:8.1%} {speedup:9.2f} "
                         f"{r['first_step_s']:10.3f} {mem_text}")
        others = {p: r["step_s"] for p, r in res["peers"].items() if p not in ("fastbp", "numpy")}
        if base and others:
            best = min(others, key=others.get)
            lines.append(f"{'':<15} fastbp against the best peer ({best}): {others[best] / base['step_s']:.2f}x")
        if base and base.get("memory"):
            lines.append(f"{'':<15} fastbp's memory budget {base['memory']['budget_bytes'] / 2 ** 20:.0f} MB")
        first = res.get("first_fit")
        if first:
            lines.append(f"{'':<15} fastbp first fit with validation, new process: {first['cold_s']:.1f} s with "
                         f"an empty kernel cache, {first['warm_s']:.2f} s warm")
        agree = res.get("loss_rel_diff_vs_torch")
        if agree is not None:
            lines.append(f"{'':<15} first-step loss, fastbp vs torch: relative difference {agree:.1e}")
    lines.append("")
    lines.append("GFLOP/s: 6 x batch x sum(fan_in x fan_out) per step; ceiling: the FLOPs a step needs (that less "
                 "layer 1's input gradient) per second, over the GEMM ceiling. fastbp x = peer's step time / "
                 "fastbp's (above 1: fastbp is faster). 1st step s: compilation (torch.compile, jax.jit) "
                 "included. memory: peak resident memory training adds above the warm framework's.")
    return "\n".join(lines)


def add_parser(sub):
    p = sub.add_parser("bench", help="benchmark a training step against PyTorch eager and the NumPy reference",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    from .bench_small import SMALL_PEERS, SMALL_WORKLOADS
    p.add_argument("--workloads", nargs="*", default=[*WORKLOADS, *SMALL_WORKLOADS],
                   help=f"any of: {', '.join(WORKLOADS)} (step time against each peer) and "
                        f"{', '.join(SMALL_WORKLOADS)} (small models: epoch time against "
                        f"{', '.join(SMALL_PEERS[2:])})")
    p.add_argument("--sizes", type=int, nargs="+", help="custom layer sizes (instead of --workloads)")
    p.add_argument("--batch", type=int, default=1024, help="batch for --sizes")
    p.add_argument("--loss", default="cross_entropy", help="loss for --sizes")
    p.add_argument("--peers", nargs="*", default=list(DEFAULT_PEERS),
                   help=f"any of: {', '.join(ALL_PEERS)} (torch: fused Adam; torch_foreach: PyTorch's default "
                        "Adam; torch_compile: the whole step compiled; peers not installed are skipped)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per peer (the median is reported)")
    p.add_argument("--seconds-per-round", type=float, default=0.4, help="timed steps per round, in seconds")
    p.add_argument("--memory", action="store_true", help="also measure each peer's peak training memory "
                   "(one fresh process per workload and peer)")
    p.add_argument("--compile-time", action="store_true", help="also time fastbp's first fit with validation "
                   "data in a new process, kernel cache empty and then warm (and, with small workloads, a first "
                   "fit and predict of a small network by fastbp's Trainer and MLPClassifier and scikit-learn's)")
    p.add_argument("--all", action="store_true", help="--memory and --compile-time")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.set_defaults(run=main)
    return p


def main(args):
    from . import bench_small
    threads = os.cpu_count()
    if args.sizes:
        workloads, small = {"custom": dict(sizes=args.sizes, batch=args.batch, loss=args.loss)}, {}
    else:
        unknown = [w for w in args.workloads if w not in WORKLOADS and w not in bench_small.SMALL_WORKLOADS]
        if unknown:
            raise ValueError(f"unknown workload(s) {unknown}; valid: "
                             f"{', '.join([*WORKLOADS, *bench_small.SMALL_WORKLOADS])}")
        workloads = {w: WORKLOADS[w] for w in args.workloads if w in WORKLOADS}
        small = {w: bench_small.SMALL_WORKLOADS[w] for w in args.workloads if w in bench_small.SMALL_WORKLOADS}
    report = {"cpu_count": threads}
    if workloads:
        ceiling = gemm_ceiling()
        all_results = {}
        for name, w in workloads.items():
            print(f"running {name} {w['sizes']} batch {w['batch']} {w['loss']} ...", file=sys.stderr, flush=True)
            res = run_workload(name, w["sizes"], w["batch"], w["loss"], args.peers, rounds=args.rounds,
                               seconds_per_round=args.seconds_per_round, threads=threads)
            all_results[name] = {**w, "flops_per_step": step_flops(w["sizes"], w["batch"]), "peers": res,
                                 "loss_rel_diff_vs_torch": loss_agreement(res)}
            if args.memory or args.all:
                for peer, r in res.items():
                    r["memory"] = peak_memory(peer, w["sizes"], w["batch"], w["loss"])
            if (args.compile_time or args.all) and "fastbp" in res:
                all_results[name]["first_fit"] = compile_times(w["sizes"], w["batch"], w["loss"])
        print(format_table(all_results, ceiling))
        report.update(gemm_ceiling_gflops=ceiling, workloads=all_results)
    if small:
        small_results = {}
        for name, w in small.items():
            print(f"running {name} {w['sizes']} batch {w['batch']}, {w['rows']} rows per epoch ...", file=sys.stderr,
                  flush=True)
            small_results[name] = bench_small.run_small(w, rounds=args.rounds)
        first = bench_small.first_runs() if args.compile_time or args.all else None
        print(("\n" if workloads else "") + bench_small.format_small(small_results, first))
        report.update(small_workloads=small_results, first_runs=first)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0
