"""What the benchmark scripts (overhead.py, rnn.py, adam.py) share: one thread on both sides, set
before torch loads; running the nabla binary with --json; timing PyTorch the way the C side times
nabla; alternating rounds, and medians and ranges over them; the agreement check of the values both
sides compute.

Importing this module does not import torch: call single_thread_env() first, then import_torch().
"""
import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def single_thread_env():
    """Single-threaded BLAS and intra-op work on both sides. To be called before torch (and its
    OpenBLAS) loads; the nabla subprocess inherits the environment."""
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    os.environ["OMP_NUM_THREADS"] = "1"


def import_torch(script):
    """torch, set to one thread; exits with a hint when this python has none."""
    try:
        import torch
    except ImportError:
        sys.exit(f"{script}: torch is not importable by this python; run it with /usr/bin/python3 "
                 "(Debian's python3-torch)")
    torch.set_num_threads(1)
    return torch


def int_in(lo, hi):
    """An argparse type: a whole number in lo..hi."""
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{s}' is not a whole number")
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is not in {lo}..{hi}")
        return v
    return parse


def find_binary(path):
    """path as given if it exists (or is absolute), else relative to the repository."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    in_repo = os.path.join(REPO, path)
    return in_repo if os.path.exists(in_repo) else path


def run_nabla(script, binary, args, env=None):
    """Runs `binary --json args...` (in env, default this process's environment) and returns the JSON
    line it printed last, as a dict; exits with a message (naming `script`) when it cannot run or
    fails."""
    cmd = [binary, "--json"] + [str(x) for x in args]
    try:
        r = subprocess.run(cmd, env=dict(os.environ) if env is None else env, capture_output=True, text=True)
    except OSError as e:
        sys.exit(f"{script}: cannot run {binary}: {e.strerror} (build it with `ninja -C build`, or pass "
                 "--nabla-bin)")
    if r.returncode != 0:
        sys.exit(f"{script}: {' '.join(cmd)} exited with {r.returncode}:\n{r.stderr.strip()}")
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        sys.exit(f"{script}: no JSON line from {binary}; it printed:\n{r.stdout}")


THREAD_VARS = ("NB_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
               "TORCH_THREADS")


def has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512f" in f.read()
    except OSError:
        return False


def thread_env(nabla=None, torch_threads=None, blas=None, passive=False):
    """This process's environment with the thread settings replaced: NB_NUM_THREADS=nabla (nabla's one
    knob), TORCH_THREADS/OMP_NUM_THREADS=torch_threads (PyTorch's intra-op threads),
    OPENBLAS_NUM_THREADS=blas, OMP_WAIT_POLICY=passive when asked (else OpenMP's default); None leaves
    a setting out. OPENBLAS_CORETYPE=SkylakeX on CPUs with AVX-512 (OpenBLAS 0.3.21 does not know
    recent ones)."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    if has_avx512():
        env["OPENBLAS_CORETYPE"] = "SkylakeX"
    if nabla is not None:
        env["NB_NUM_THREADS"] = str(nabla)
    if torch_threads is not None:
        env["TORCH_THREADS"] = env["OMP_NUM_THREADS"] = str(torch_threads)
    if blas is not None:
        env["OPENBLAS_NUM_THREADS"] = str(blas)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def run_torch_worker(script, workload, args, env):
    """Runs torchbench.py WORKLOAD args... with Debian's python in env; returns its JSON line."""
    cmd = ["/usr/bin/python3", os.path.join(REPO, "bench", "torchbench.py"), workload] + [str(x) for x in args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{script}: {' '.join(cmd)} exited with {r.returncode}:\n{r.stderr.strip()}")
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        sys.exit(f"{script}: no JSON line from torchbench.py; it printed:\n{r.stdout}")


def load_line():
    """'load average 1.23 (1, 5, 15 min: ...)' of the machine now."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} (1, 5, 15 min) on {os.cpu_count()} CPUs"


def time_calls(fn, a, cpu=False):
    """As bench.h's bench_time: calls fn() untimed until it has run at least a.warmup times and for
    a.warmup_ms milliseconds, then a.repeats times, each timed alone (what fn returns is released
    inside the timed region), with the garbage collector off. Returns (wall, cpu): the samples in
    wall-time ns and, with cpu, in this thread's CPU-time ns (else an empty list)."""
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    wall, cpu_samples = [], []
    gc.disable()
    try:
        start, n = clock(), 0
        while n < a.warmup or clock() - start < a.warmup_ms * 1e6:
            fn()
            n += 1
        for _ in range(a.repeats):
            t0 = clock()
            c0 = cpu_clock() if cpu else 0
            fn()
            if cpu:
                cpu_samples.append(cpu_clock() - c0)
            wall.append(clock() - t0)
    finally:
        gc.enable()
    return wall, cpu_samples


def alternate(rounds, *runs):
    """`rounds` rounds, each calling every run() in turn (nabla and PyTorch alternate, so that a noisy
    spell on the machine hits both); one list of results per run."""
    results = [[] for _ in runs]
    for _ in range(rounds):
        for out, run in zip(results, runs):
            out.append(run())
    return results


def medians(rounds, keys):
    """{key: the median over rounds of each round's figure}"""
    return {k: statistics.median(r[k] for r in rounds) for k in keys}


def span(rounds, key):
    """(lowest, highest) figure over rounds"""
    return min(r[key] for r in rounds), max(r[key] for r in rounds)


def spread(nb_rounds, pt_rounds, key, digits):
    """'   (lo-hi; lo-hi)': the ranges over rounds of nabla's and of PyTorch's figure"""
    f = "{:.%df}-{:.%df}" % (digits, digits)
    return "   ({}; {})".format(f.format(*span(nb_rounds, key)), f.format(*span(pt_rounds, key)))


def setup_line(torch, binary, torch_note="", machine_note=""):
    """What ran: the binary, PyTorch's version and threads, the machine's CPUs."""
    return (f"nabla: {binary}; PyTorch {torch.__version__}, {torch.get_num_threads()} thread{torch_note}; "
            f"{os.cpu_count()} CPUs{machine_note}")


def agree(nb, pt, keys, tol, label=""):
    """Whether nabla's and PyTorch's values of keys agree to tol relative (to max(1, |PyTorch's|)):
    both sides must compute the same function and gradients (a guard against benchmarking a
    different workload by mistake). Warns on stderr of each that does not."""
    bad = [k for k in keys if abs(nb[k] - pt[k]) > tol * max(1.0, abs(pt[k]))]
    for k in bad:
        print(f"warning: {label}{k} differs: nabla {nb[k]!r}, PyTorch {pt[k]!r}", file=sys.stderr)
    return not bad
