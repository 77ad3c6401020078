"""``python -m perf run``: numrnn against PyTorch on the same shapes, side by side.

How a case is measured
----------------------
1. Build the numrnn side and PyTorch's with numrnn's weights copied in, on the
   same data (perf.cases, perf.torch_side).
2. Check before timing (STYLE.md point 15): numrnn's float32 loss and gradients
   (outputs, probabilities, updated parameters) against PyTorch's float32 result,
   for PyTorch as run by default and at its best; without torch, against numrnn
   in float64. CTC is also checked against PyTorch in float64, because PyTorch's
   float32 CTC gradient is itself only good to about 1e-3 (perf.cases). A case that disagrees is reported and not timed.
3. Warm up (compilation, workspaces, torch's allocator), then calibrate: a sample
   is the mean of k back-to-back calls, k chosen so that a sample lasts at least
   ``MIN_SAMPLE_S``.
4. Rounds: every round takes one sample of numrnn, of PyTorch default and of
   PyTorch best, in an order that rotates from round to round, so that a busy
   spell of the shared machine falls on all three alike. Each sample starts
   ``SETTLE_S`` after the previous one ends: PyTorch's OpenMP workers keep
   spinning after a call returns and, on a 2-core machine, slow whatever runs
   next (a numrnn GRU step right after three torch steps in the worker process:
   24.9 ms; 10 ms later: 17.7 ms; 100 ms later: 16.6 ms). The number of rounds is
   the time budget of the case divided by the time of one round, within
   [min, max] (see ``Settings``); a case whose rounds would exceed ``max_case_s``
   (a machine so oversubscribed that a step takes seconds) gets fewer rounds, at
   least one, and a "capped" note in its record.
5. Report medians with min and max; ratios are torch median / numrnn median
   (above 1: numrnn is faster). Beside them, "by round": the median of each
   round's own ratio, torch best / numrnn, whose samples were taken seconds
   apart; a slow spell that falls on some rounds moves it less than it moves
   the ratio of medians.

PyTorch default runs in this process, imported before numrnn so that numrnn's
``OMP_WAIT_POLICY=PASSIVE`` does not reach torch's OpenMP runtime; before each
case the suite checks that subnormal arithmetic is not flushed in torch's
threads here. It does run with numrnn's allocator thresholds (numrnn.memory, set
in glibc for the whole process), which can only spare it page faults. PyTorch at
its best (``torch.set_flush_denormal(True)`` set before its thread pool starts,
fused Adam) runs in a worker process driven over a pipe (perf.worker), because
flush-to-zero is inherited by threads created afterwards and would change the
state of the threads that run numrnn and torch-default here. The worker only
computes when asked, so the alternation holds across processes. It starts with
the same allocator thresholds, as environment variables (unless the user set an
allocator variable of their own): with glibc's defaults a 2-layer LSTM training
step of PyTorch's faulted in about 11,000 pages, 10 ms of a 25 ms step here,
against 17 with them.

Threads: for each count in ``--threads``, numrnn's Numba threads and BLAS
(numrnn_cli.threads.set_num_threads) and ``torch.set_num_threads`` in both
processes.

Thread scaling: the cases run for one thread count after the other, minutes apart,
and a shared machine's speed moves between spells of that length. The 1- to
N-thread speed-up of the row-MNIST LSTM step is therefore also measured with the
two counts alternating step by step on one model in this process
(``thread_scaling``), when ``--threads`` holds 1 and more.

GFLOP/s: each training step's analytic GEMM FLOPs (perf.flops) over its median
time, beside the GEMM rate at the step's own GEMM shapes, timed with ``np.dot``
and with ``np.dot`` inside a Numba function (each distinct shape: the median of
9 samples, weighted by how many times a step runs it).
"""
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

USER_ENV = dict(os.environ)            # before numrnn sets OMP_WAIT_POLICY

try:                                   # torch first: its OpenMP runtime reads the user's environment
    import torch
except ImportError:                    # pragma: no cover - torch is optional
    torch = None

import numpy as np  # noqa: E402

import numrnn as nr  # noqa: E402

from . import cases as cases_module  # noqa: E402
from . import startup  # noqa: E402
from .worker import read, write  # noqa: E402

if torch is not None:
    from . import torch_side

# numrnn's allocator thresholds for the PyTorch worker (module docstring)
WORKER_ALLOCATOR_ENV = nr.memory.freed_memory_environment(USER_ENV)

MIN_SAMPLE_S = 0.005
SETTLE_S = 0.05          # quiet gap before each sample (point 4 above)


@dataclass
class Settings:
    budget_s: float          # time budget of one case's timed rounds
    min_rounds: int
    max_rounds: int
    max_case_s: float        # hard cap: fewer than min_rounds (at least 1) when a round is slower
    cold_reps: int
    warm_reps: int
    memory: bool
    scaling_rounds: int      # alternating 1-thread / N-thread steps (thread_scaling)


FULL = Settings(budget_s=15.0, min_rounds=5, max_rounds=31, max_case_s=75.0, cold_reps=2, warm_reps=5,
                memory=True, scaling_rounds=40)
QUICK = Settings(budget_s=3.0, min_rounds=3, max_rounds=9, max_case_s=20.0, cold_reps=0, warm_reps=3,
                 memory=False, scaling_rounds=10)
SCALING_CASE = "train row lstm"


# ----------------------------------------------------------------------------- statistics

def summary(samples):
    a = np.asarray(samples, np.float64)
    return {"samples": [float(v) for v in a], "n": int(a.size), "median": float(np.median(a)),
            "min": float(a.min()), "max": float(a.max()), "p25": float(np.percentile(a, 25)),
            "p75": float(np.percentile(a, 75))}


# ----------------------------------------------------------------------------- threads and the worker

def set_threads(n):
    try:
        from numrnn_cli.threads import set_num_threads
        how = set_num_threads(n)
    except ImportError:
        import numba
        numba.set_num_threads(n)
        how = {"numba": n, "blas": "not set (numrnn_cli not importable)"}
    if torch is not None:
        torch.set_num_threads(n)
    return how


class Worker:
    """PyTorch at its best in a separate process (perf.worker)."""

    def __init__(self):
        env = startup._child_env(USER_ENV, **WORKER_ALLOCATOR_ENV)
        self.proc = subprocess.Popen([sys.executable, "-m", "perf.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)

    def request(self, *msg):
        write(self.proc.stdin, msg)
        reply = read(self.proc.stdout)
        if reply is None:
            raise RuntimeError("the PyTorch worker exited")
        status, value = reply
        if status != "ok":
            raise RuntimeError(f"PyTorch worker: {value}")
        return value

    def close(self):
        try:
            write(self.proc.stdin, ("quit",))
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()


# ----------------------------------------------------------------------------- one case

def _timer(fn):
    def timed(calls):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls
    return timed


def run_case(spec, threads, settings, worker, log):
    """Check, then time; returns the case's record."""
    record = {"name": spec["name"], "kind": spec["kind"], "threads": threads,
              "spec": {k: v for k, v in spec.items() if k != "name"}}
    data = cases_module.make_data(spec)
    ours = cases_module.NumrnnCase(spec, data)
    mine = ours.check(torch_names=torch is not None)
    sides = {"numrnn": _timer(ours.step)}
    checks = {}
    if torch is not None:
        tol = cases_module.TORCH_FLOAT32_TOLERANCE.get(spec["kind"])
        data64 = cases_module.float64_reference(spec, data)
        if data64 is not None:
            checks["torch_float64"] = cases_module.compare_results(
                spec, mine, torch_side.build(spec, ours.weights, data64, "default").check())
        default = torch_side.build(spec, ours.weights, data, "default")
        checks["torch_default"] = cases_module.compare_results(spec, mine, default.check(), tol)
        sides["torch_default"] = _timer(default.step)
        key = f"{spec['name']}@{threads}"
        checks["torch_best"] = cases_module.compare_results(
            spec, mine, worker.request("build", key, spec, ours.weights, data), tol)
        sides["torch_best"] = lambda calls: worker.request("time", key, calls)
    else:
        reference = ours.check(np.float64, torch_names=False)
        checks["numrnn_float64"] = cases_module.compare_results(spec, ours.check(torch_names=False), reference)
    record["check"] = {k: {"max_rel_error": err, "worst": where} for k, (err, where) in checks.items()}

    # warm up twice (once for a side slower than 0.5 s a call), then calibrate calls
    # per sample from the last warm-up
    one = {side: timer(1) for side, timer in sides.items()}
    one.update({side: timer(1) for side, timer in sides.items() if one[side] < 0.5})
    calls = {side: max(1, math.ceil(MIN_SAMPLE_S / max(t, 1e-9))) for side, t in one.items()}
    round_s = max(sum(one[s] * calls[s] for s in sides), 1e-9)
    rounds = int(min(settings.max_rounds, max(settings.min_rounds, settings.budget_s // round_s)))
    if rounds * round_s > settings.max_case_s:   # a case too slow to repeat min_rounds times (oversubscribed)
        rounds = max(1, min(rounds, int(settings.max_case_s // round_s)))
        record["capped"] = f"{rounds} rounds: one round took {round_s:.1f} s (cap {settings.max_case_s:.0f} s)"
    if torch is not None:
        record["torch_default_flush_fraction"] = torch_side.denormal_probe()
    names = list(sides)
    samples = {side: [] for side in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for side in order:
            time.sleep(SETTLE_S)
            samples[side].append(sides[side](calls[side]))
    for side in names:
        record[side] = summary(samples[side])
        record[side]["calls_per_sample"] = calls[side]
    record.update(ratios(samples))
    flops = cases_module.step_flops(spec)
    if flops:
        record["flops"] = flops
        record["gflops"] = {side: flops / record[side]["median"] / 1e9 for side in names}
        record["gemm"] = gemm_rates(spec)
    if torch is not None:
        worker.request("drop", f"{spec['name']}@{threads}")
    log(format_row(record))
    return record


def ratios(samples):
    """{side: samples, one per round} -> ratio_<variant>, torch median / numrnn median,
    and round_ratio_<variant>, the median of the rounds' own ratios, for each torch
    variant timed."""
    ours = np.asarray(samples["numrnn"])
    out = {}
    for variant in ("best", "default"):
        if f"torch_{variant}" in samples:
            theirs = np.asarray(samples[f"torch_{variant}"])
            out[f"ratio_{variant}"] = float(np.median(theirs) / np.median(ours))
            out[f"round_ratio_{variant}"] = float(np.median(theirs / ours))
    return out


# ----------------------------------------------------------------------------- GEMM at the step's shapes

_numba_dot = None


def _get_numba_dot():
    global _numba_dot
    if _numba_dot is None:
        import numba

        @numba.njit
        def dot(a, b, out):
            np.dot(a, b, out)
        _numba_dot = dot
    return _numba_dot


def gemm_rates(spec):
    """Time of all of a step's GEMMs with np.dot and with Numba's np.dot, and the
    GFLOP/s that makes."""
    from . import flops as flops_module
    gemms = flops_module.step_gemms(spec["cell"], spec["T"], spec["B"], spec["F"], spec["H"], spec["layers"],
                                    spec["out"])
    merged = {}
    for m, k, n, count in gemms:
        merged[(m, k, n)] = merged.get((m, k, n), 0) + count
    rng = np.random.default_rng(0)
    total = {"numpy": 0.0, "numba": 0.0}
    nb = _get_numba_dot()
    for (m, k, n), count in merged.items():
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        out = np.empty((m, n), np.float32)
        for name, fn in (("numpy", lambda: np.dot(a, b, out)), ("numba", lambda: nb(a, b, out))):
            fn()
            t1 = _timer(fn)(1)
            calls = max(1, math.ceil(0.002 / max(t1, 1e-9)))
            total[name] += count * float(np.median([_timer(fn)(calls) for _ in range(9)]))
    flops = flops_module.gemm_flops(gemms)
    return {"numpy_s": total["numpy"], "numba_s": total["numba"], "numpy_gflops": flops / total["numpy"] / 1e9,
            "numba_gflops": flops / total["numba"] / 1e9}


# ----------------------------------------------------------------------------- machine

def machine_info():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numba
    import scipy
    import llvmlite
    info = {"cpu": cpu, "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "platform": platform.platform(), "python": platform.python_version(),
            "numrnn": nr.__version__, "numpy": np.__version__, "numba": numba.__version__,
            "llvmlite": llvmlite.__version__, "scipy": scipy.__version__,
            "torch": torch.__version__ if torch is not None else None,
            "omp_wait_policy_user": USER_ENV.get("OMP_WAIT_POLICY"),
            "omp_wait_policy_numrnn": os.environ.get("OMP_WAIT_POLICY"),
            "gomp_spincount_numrnn": os.environ.get("GOMP_SPINCOUNT"),
            "torch_worker_allocator_env": WORKER_ALLOCATOR_ENV}
    try:
        info["numba_threading_layer"] = numba.threading_layer()
    except ValueError:
        info["numba_threading_layer"] = None
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                            text=True).stdout.strip() or None
        # files that differ from that commit: the figures are of the working tree
        info["git_modified"] = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                              capture_output=True, text=True).stdout.split("\n")[:-1]
    except OSError:
        info["git_commit"] = None
    return info


# ----------------------------------------------------------------------------- table

def fmt_time(s):
    if s is None:
        return "-"
    if s >= 1.0:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def fmt_side(rec):
    if not rec:
        return "-"
    return f"{fmt_time(rec['median'])} [{fmt_time(rec['min'])}-{fmt_time(rec['max'])}]"


HEADER = (f"{'case':34s} {'thr':>3s}  {'numrnn median [min-max]':32s} {'torch default':16s} "
          f"{'torch best':16s} {'best/ours':>9s} {'dflt/ours':>9s} {'by round':>8s}")


def format_row(rec):
    def ratio(key):
        return f"{rec[key]:.2f}" if key in rec else "-"
    td = fmt_time(rec["torch_default"]["median"]) if "torch_default" in rec else "-"
    tb = fmt_time(rec["torch_best"]["median"]) if "torch_best" in rec else "-"
    return (f"{rec['name']:34s} {rec['threads']:>3d}  {fmt_side(rec['numrnn']):32s} {td:16s} {tb:16s} "
            f"{ratio('ratio_best'):>9s} {ratio('ratio_default'):>9s} {ratio('round_ratio_best'):>8s}"
            f"  n={rec['numrnn']['n']}"
            + (" (capped)" if "capped" in rec else ""))


def format_report(result):
    lines = [f"numrnn perf suite, {result['created']}, {result['machine']['cpu']}, "
             f"{result['machine']['cpu_count']} cores; load average {result['load_start']} at start, "
             f"{result['load_end']} at end", "", HEADER]
    lines += [format_row(rec) for rec in result["cases"]]
    train = [rec for rec in result["cases"] if "gflops" in rec]
    if train:
        lines += ["", "GFLOP/s of the training steps (GEMM FLOPs / median time) beside GEMM at the step's shapes",
                  f"{'case':34s} {'thr':>3s} {'GFLOP':>7s} {'numrnn':>7s} {'t-dflt':>7s} {'t-best':>7s} "
                  f"{'np.dot':>7s} {'nb.dot':>7s} {'GEMM floor':>11s}"]
        for rec in train:
            g = rec["gflops"]
            lines.append(f"{rec['name']:34s} {rec['threads']:>3d} {rec['flops'] / 1e9:7.3f} {g['numrnn']:7.1f} "
                         f"{g.get('torch_default', float('nan')):7.1f} {g.get('torch_best', float('nan')):7.1f} "
                         f"{rec['gemm']['numpy_gflops']:7.1f} {rec['gemm']['numba_gflops']:7.1f} "
                         f"{fmt_time(rec['gemm']['numpy_s']):>11s}")
    for rec in result.get("startup", []):
        lines.append("")
        lines.append(f"time to {rec.get('name', 'first step')} ({rec['threads']} threads, the default; driver, "
                     f"see perf/startup.py): "
                     + ", ".join(f"{k} {fmt_side(rec[k])}" for k in ("cold", "warm") if rec.get(k)))
    for rec in result.get("scaling", []):
        lines.append("")
        lines.append(f"thread scaling of the {rec['case']} step, 1 and {rec['threads']} threads alternating step by "
                     f"step: {fmt_side(rec['one_thread'])} and {fmt_side(rec['threads_n'])}, "
                     f"{rec['speedup']:.2f}x")
    for rec in result.get("memory", []):
        lines.append(f"peak RSS of a pixel-MNIST LSTM-128 training step: numrnn {rec['numrnn']['maxrss_mib']:.0f} MiB"
                     + (f", torch {rec['torch']['maxrss_mib']:.0f} MiB (torch/numrnn "
                        f"{rec['torch']['maxrss_mib'] / rec['numrnn']['maxrss_mib']:.2f})" if rec.get("torch") else ""))
    for name, message in result.get("failures", {}).items():
        lines.append(f"FAILED {name}: {message}")
    return "\n".join(lines)


def thread_scaling(threads, rounds):
    """numrnn's SCALING_CASE step on 1 thread and on ``threads``, alternating step by
    step on one model (each step SETTLE_S after the previous one): both counts see
    the machine in the same spell. Returns medians and the speed-up."""
    spec = next(c for c in cases_module.CASES if c["name"] == SCALING_CASE)
    case = cases_module.NumrnnCase(spec, cases_module.make_data(spec))
    samples = {threads: [], 1: []}
    for n in samples:                    # compile and warm up both builds
        set_threads(n)
        for _ in range(3):
            case.step()
    for _ in range(rounds):
        for n, times in samples.items():
            set_threads(n)
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            case.step()
            times.append(time.perf_counter() - start)
    one, many = summary(samples[1]), summary(samples[threads])
    return {"case": SCALING_CASE, "threads": threads, "one_thread": one, "threads_n": many,
            "speedup": one["median"] / many["median"]}


# ----------------------------------------------------------------------------- the run

def load_average():
    return [round(v, 2) for v in os.getloadavg()]


def select(pattern, quick):
    import fnmatch
    chosen = [c for c in cases_module.CASES if not quick or c["name"] in cases_module.QUICK]
    if pattern:
        pats = [p.strip() for p in pattern.split(",") if p.strip()]
        chosen = [c for c in chosen if any(fnmatch.fnmatch(c["name"], p) or p in c["name"] for p in pats)]
    return chosen


def run(quick=False, json_out=None, threads=(2, 1), pattern=None, extras=True, log=print):
    settings = QUICK if quick else FULL
    result = {"schema": 1, "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "argv": sys.argv, "quick": quick, "load_start": load_average(), "machine": machine_info(),
              "settings": settings.__dict__, "cases": [], "startup": [], "memory": [], "scaling": [],
              "failures": {}}
    chosen = select(pattern, quick)
    worker = Worker() if torch is not None else None
    try:
        log(f"load average at start: {result['load_start']}")
        if worker is not None:
            result["torch_best_probe"] = worker.request("probe")
        log(HEADER)
        for n in threads:
            result.setdefault("threads_set", {})[str(n)] = set_threads(n)
            if worker is not None:
                worker.request("threads", n)
            for spec in chosen:
                try:
                    result["cases"].append(run_case(spec, n, settings, worker, log))
                except (ValueError, RuntimeError) as e:
                    result["failures"][f"{spec['name']}@{n}"] = str(e)
                    log(f"{spec['name']:34s} {n:>3d}  FAILED: {e}")
        if worker is not None:
            result["torch_best_probe_end"] = worker.request("probe")
    finally:
        if worker is not None:
            worker.close()
    many = max(threads)
    if extras and 1 in threads and many > 1 and (pattern is None or "scaling" in pattern):
        log("thread scaling ...")
        result["scaling"].append(thread_scaling(many, settings.scaling_rounds))
    if extras and (pattern is None or any(p in pattern for p in ("start", "memory"))):
        set_threads(max(threads))
        for name, mode in (("first step", "first-step"), ("first prediction", "first-predict")):
            log(f"time to {name} ...")
            fs = startup.first_line_samples(USER_ENV, mode, settings.cold_reps, settings.warm_reps)
            rec = {"name": name, "threads": os.cpu_count(), "warm_cache": fs["warm_cache"], "reports": fs["reports"]}
            for k in ("cold", "warm"):
                if fs[k]:
                    rec[k] = summary(fs[k])
            result["startup"].append(rec)
        if settings.memory:
            log("peak memory ...")
            mem = {"numrnn": startup.peak_memory(USER_ENV, "numrnn")}
            if torch is not None:
                mem["torch"] = startup.peak_memory(USER_ENV, "torch")
            result["memory"].append(mem)
    result["load_end"] = load_average()
    report = format_report(result)
    log("")
    log(report)
    if json_out:
        tmp = json_out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        os.replace(tmp, json_out)
        log(f"\nwrote {json_out}")
    return result
