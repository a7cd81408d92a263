#!/usr/bin/env python3
"""Time per epoch of data-parallel training on this machine (bench_dist: the Fashion-MNIST MLP of
examples/fashion_mnist.c, global batch 256), in alternating rounds:

  1 process  x 1 thread            bench_dist --threads 1
  1 process  x 2 threads           bench_dist --threads 2
  2 processes x 1 thread           mpirun -np 2 bench_dist --threads 1     (through tests/mpirun.sh:
  2 processes x 1 thread, no overlap     ... --no-overlap                  shared memory and loopback
  2 processes x 1 thread, cut bucket     ... --first-bucket 536000         only, never the network)

and prints the medians over rounds (and the best epoch) with the load average, then the scaling estimate of
docs/distributed.md for N machines from the measured single-thread compute time: a step takes
t_compute / N + t_allreduce(N), with a ring allreduce moving 2 (N - 1) / N x the gradient bytes over
each link plus 2 (N - 1) latencies.

  /usr/bin/python3 bench/dist.py [--bin /tmp/build-rel/bench/bench_dist] [--rounds 3] [--epochs 3]
                                 [--synthetic] [--bandwidth-gbit 10,100] [--latency-us 5] [--no-cnn]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIRUN_SH = os.path.join(REPO, "tests", "mpirun.sh")

CONFIGS = [
    ("1 process x 1 thread", 1, ["--threads", "1"]),
    ("1 process x 2 threads", 1, ["--threads", "2"]),
    ("2 processes x 1 thread", 2, ["--threads", "1"]),
    ("2 processes x 1 thread, no overlap", 2, ["--threads", "1", "--no-overlap"]),
    # the first bucket ends between layer 1 and layer 0 (535592 bytes of gradients): it can start
    # before layer 0's backward runs, instead of with it at the very end
    ("2 processes x 1 thread, first bucket cut at layer 0", 2, ["--threads", "1", "--first-bucket", "536000"]),
]


def load():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


# The network rule (tests/mpi-env.sh, which tests/mpirun.sh sources as well): every job of this script
# stays on this machine, over shared memory and loopback, whatever the caller's environment says.
MPI_LOCAL_ENV = {"OMPI_MCA_btl": "self,vader", "OMPI_MCA_oob_tcp_if_include": "lo",
                 "OMPI_MCA_btl_tcp_if_include": "lo", "OMPI_ALLOW_RUN_AS_ROOT": "1",
                 "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "HYDRA_IFACE": "lo", "UCX_TLS": "self,sm",
                 "UCX_NET_DEVICES": "lo", "FI_PROVIDER": "shm"}


def run(binary, nprocs, args, mpirun):
    cmd = [binary, "--json"] + args
    if nprocs > 1:
        cmd = ["sh", MPIRUN_SH, "-t", "900", mpirun, str(nprocs)] + cmd
    env = dict(os.environ, OPENBLAS_CORETYPE=os.environ.get("OPENBLAS_CORETYPE", "SkylakeX"), **MPI_LOCAL_ENV)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"dist.py: {' '.join(cmd)} exited with {r.returncode}:\n{r.stdout}\n{r.stderr}")
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if not lines:
        sys.exit(f"dist.py: no JSON line from {' '.join(cmd)}:\n{r.stdout}")
    return json.loads(lines[-1])


def estimate(step_s, grad_bytes, bandwidths_gbit, latency_us, label):
    """The table for N machines: t_compute / N + ring allreduce, no overlap assumed."""
    print(f"\n{label}: compute {step_s * 1e3:.2f} ms per step on one core, {grad_bytes / 1e6:.2f} MB of "
          f"gradients per step, latency {latency_us:g} us per message")
    head = "| N | compute ms |" + "".join(f" allreduce ms at {b:g} Gbit/s | speed-up |" for b in bandwidths_gbit)
    print(head)
    print("|--:|--:|" + "--:|--:|" * len(bandwidths_gbit))
    for n in (1, 2, 4, 8, 16, 32, 64):
        compute = step_s / n
        row = f"| {n} | {compute * 1e3:.2f} |"
        for b in bandwidths_gbit:
            comm = 0.0 if n == 1 else 2 * (n - 1) / n * grad_bytes / (b * 1e9 / 8) + 2 * (n - 1) * latency_us * 1e-6
            row += f" {comm * 1e3:.2f} | {step_s / (compute + comm):.1f}x |"
        print(row)


def nabla_cnn_step(dist_bin, batch):
    """Seconds per training step (forward, backward, AdamW) of examples/fashion_mnist's CNN in nabla on one
    thread (bench_conv --case cnn, beside bench_dist; CPU time, steadier than wall time on a shared
    machine), and its gradient bytes (float32 parameters)."""
    conv_bin = os.path.join(os.path.dirname(os.path.abspath(dist_bin)), "bench_conv")
    env = dict(os.environ, NB_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    r = subprocess.run([conv_bin, "--case", "cnn", "--batch", str(batch), "--repeats", "10", "--json"],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"dist.py: {conv_bin} failed:\n{r.stderr}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    return res["step_cpu_ms"] / 1e3, 4 * res["parameters"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(REPO, "build", "bench", "bench_dist"))
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--synthetic", action="store_true", help="random images instead of Fashion-MNIST")
    ap.add_argument("--train-limit", type=int, default=54000, help="training images per epoch (a quick check: 5120)")
    ap.add_argument("--bandwidth-gbit", default="10,100")
    ap.add_argument("--latency-us", type=float, default=5.0)
    ap.add_argument("--no-cnn", action="store_true", help="skip the CNN estimate")
    a = ap.parse_args()
    extra = ["--epochs", str(a.epochs), "--train-limit", str(a.train_limit)] + (["--synthetic"] if a.synthetic else [])
    results = {name: [] for name, _, _ in CONFIGS}
    loads = [load()]
    for r in range(a.rounds):
        for name, nprocs, args in CONFIGS:
            res = run(a.bin, nprocs, args + extra, a.mpirun)
            results[name].append(res)
            print(f"round {r + 1}: {name}: {res['epoch_s']:.3f} s per epoch (load {load():.1f})", file=sys.stderr)
        loads.append(load())
    med = lambda name, key: statistics.median(x[key] for x in results[name])
    base = med(CONFIGS[0][0], "epoch_s")
    first = results[CONFIGS[0][0]][0]
    print(f"bench_dist: Fashion-MNIST MLP, {first['parameters']} parameters, global batch {first['batch']}, "
          f"{first['steps_per_epoch']} steps per epoch; medians of {a.rounds} rounds of the median of {a.epochs} "
          f"epochs; load average {min(loads):.1f}-{max(loads):.1f}\n")
    print("| configuration | s per epoch | speed-up | best epoch s | rank 0 CPU s | MPI wait s per epoch (max over "
          "ranks) | in hooks s | buckets started during backward |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for name, nprocs, _ in CONFIGS:
        e = med(name, "epoch_s")
        if nprocs > 1:
            last = results[name][-1]
            total = last["buckets_in_backward"] + last["buckets_at_finish"]
            mpi = f"{med(name, 'wait_s_max'):.3f} | {med(name, 'hook_s_max'):.3f} | " \
                  f"{last['buckets_in_backward']} of {total} |"
        else:
            mpi = "- | - | - |"
        best = min(x["epoch_s_min"] for x in results[name])
        print(f"| {name} | {e:.3f} | {base / e:.2f}x | {best:.3f} | {med(name, 'epoch_cpu_s'):.3f} | {mpi}")
    # the compute time of a step: the CPU time of one process on one thread (on a shared machine its wall
    # time also counts the time other work held the core)
    step_s = med(CONFIGS[0][0], "epoch_cpu_s") / first["steps_per_epoch"]
    bws = [float(b) for b in a.bandwidth_gbit.split(",")]
    grad_bytes = first["parameters"] * 4
    estimate(step_s, grad_bytes, bws, a.latency_us, "MLP (nabla, measured here: CPU time of 1 process x 1 thread)")
    if not a.no_cnn:
        cnn_s, cnn_bytes = nabla_cnn_step(a.bin, first["batch"])
        estimate(cnn_s, cnn_bytes, bws, a.latency_us,
                 "CNN of examples/fashion_mnist --model cnn (nabla, measured here: CPU time of 1 thread, bench_conv)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
