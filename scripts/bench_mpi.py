"""MPI data parallelism measured on this machine, and its cost model for clusters.

    python scripts/bench_mpi.py [--rounds 3]       # needs pip install 'fastbp[mpi]'; nothing else running

1. Allreduce: each benchmark workload's gradient buffer (float32, in place, MPI_SUM) on 2 ranks, median of
   repeats, and its bus bandwidth 2(P-1)/P x bytes / time.
2. Compute: one process's training step (gradient + update, all cores) on each workload's batch.
3. 2 ranks x 1 thread against 1 rank x 2 threads on mnist_bigbatch and wide, the same global batch:
   launches alternate (round by round) so that machine drift hits both alike; median step times.
4. The cost model for weak scaling (every rank keeps the workload's batch, P ranks): step time
   T(P) = T_compute + 2(P-1)/P x bytes / bandwidth + 2(P-1) x latency (ring allreduce, no overlap),
   efficiency T_compute / T(P), for 25 Gb/s Ethernet and 200 Gb/s InfiniBand.

Each measurement runs in its own subprocess (under mpiexec for the ranks): `--worker ...` is that side.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from fastbp.bench import WORKLOADS, make_batch  # noqa: E402
from fastbp.state import layer_offsets  # noqa: E402

# (name, bandwidth in bytes/s, one message's latency in s): typical MPI figures for each fabric.
NETWORKS = [("25 Gb/s Ethernet", 25e9 / 8, 20e-6), ("200 Gb/s InfiniBand", 200e9 / 8, 2e-6)]
RANKS = [2, 8, 32, 256]


def n_params(sizes):
    return int(layer_offsets(sizes)[-1])


def ring_allreduce_s(nbytes, ranks, bandwidth, latency):
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * latency


# ---- the measuring side (one subprocess per measurement) ----

def worker_allreduce(repeats):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    found = {}
    for name, w in WORKLOADS.items():
        buf = np.ones(n_params(w["sizes"]), np.float32)
        times = []
        for i in range(repeats + 2):
            comm.Barrier()
            t = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, [buf, MPI.FLOAT], op=MPI.SUM)
            if i >= 2:  # the first two set up the shared-memory channels
                times.append(time.perf_counter() - t)
        found[name] = statistics.median(times)
    if comm.Get_rank() == 0:
        print(json.dumps(found))


def worker_steps(names, steps, threads):
    """Median step time of each workload, on MPI.COMM_WORLD's ranks when launched under mpiexec."""
    import fastbp
    from fastbp.distributed import launched_world
    comm = launched_world()
    found = {}
    for name in names:
        w = WORKLOADS[name]
        X, y = make_batch(w["sizes"], w["batch"], w["loss"])
        t = fastbp.Trainer(w["sizes"], loss=w["loss"], batch_size=w["batch"], seed=0, threads=threads, comm=comm)
        for _ in range(2):
            t.step(X, y)  # compilation (cached on disk after the first run) and first touch of the workspaces
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            t.step(X, y)
            times.append(time.perf_counter() - start)
        found[name] = statistics.median(times)
    if comm is None or comm.Get_rank() == 0:
        print(json.dumps(found))


# ---- the driver ----

def _run(command):
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mpiexec():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.path.exists(beside) else "mpiexec"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating launches of each configuration")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per launch (wide: 3)")
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    me = [sys.executable, os.path.abspath(__file__)]
    if args.worker is not None:
        if args.worker[0] == "allreduce":
            return worker_allreduce(int(args.worker[1]))
        threads = None if args.worker[2] == "auto" else int(args.worker[2])
        return worker_steps(args.worker[3:], int(args.worker[1]), threads)

    mpiexec = _mpiexec()
    print("1. Allreduce of the gradient buffer on 2 ranks (this machine, shared memory)")
    reduce_s = _run([mpiexec, "-n", "2", *me, "--worker", "allreduce", "20"])
    for name, w in WORKLOADS.items():
        nbytes = 4 * n_params(w["sizes"])
        print(f"   {name:15s} {nbytes / 1e6:8.2f} MB  {reduce_s[name] * 1e3:8.3f} ms  "
              f"bus {nbytes / reduce_s[name] / 1e9:6.2f} GB/s")

    print("\n2. One process's step (all cores)")
    compute_s = {}
    for name in WORKLOADS:
        steps = 3 if name == "wide" else args.steps
        compute_s.update(_run([*me, "--worker", "steps", str(steps), "auto", name]))
        print(f"   {name:15s} {compute_s[name] * 1e3:9.2f} ms")

    print("\n3. 2 ranks x 1 thread vs 1 rank x 2 threads (same global batch), alternating launches")
    pair = ["mnist_bigbatch", "wide"]
    ranks2, ranks1 = {n: [] for n in pair}, {n: [] for n in pair}
    for _ in range(args.rounds):
        for found, command in ((ranks2, [mpiexec, "-n", "2", *me, "--worker", "steps", "3", "1", *pair]),
                               (ranks1, [*me, "--worker", "steps", "3", "2", *pair])):
            for name, seconds in _run(command).items():
                found[name].append(seconds)
    for name in pair:
        two, one = statistics.median(ranks2[name]), statistics.median(ranks1[name])
        print(f"   {name:15s} 2x1 {two * 1e3:9.2f} ms   1x2 {one * 1e3:9.2f} ms   "
              f"throughput 2x1 / 1x2 = {one / two:.3f}")

    print("\n4. Cost model, weak scaling (per-rank batch as in the workload; ring allreduce, no overlap)")
    header = " | ".join(f"P={p}" for p in RANKS)
    for network, bandwidth, latency in NETWORKS:
        print(f"\n   {network} ({bandwidth / 1e9:.3g} GB/s, {latency * 1e6:g} us): step ms (efficiency)")
        print(f"   | workload | compute ms | {header} |")
        for name, w in WORKLOADS.items():
            nbytes = 4 * n_params(w["sizes"])
            cells = []
            for p in RANKS:
                total = compute_s[name] + ring_allreduce_s(nbytes, p, bandwidth, latency)
                cells.append(f"{total * 1e3:.2f} ({compute_s[name] / total:.0%})")
            print(f"   | {name} | {compute_s[name] * 1e3:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
