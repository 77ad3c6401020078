"""Measurements that need a fresh process: time to the first finished training step
and to the first prediction of a saved model (cold and warm Numba cache), and the
peak memory of a pixel-MNIST training step.

Time to first step. A small driver (``python -m perf.startup first-step``) imports
numrnn, builds the model that ``numrnn train smnist`` builds by default (LSTM-128
on row MNIST, Classify(10), batch 64), runs one ``loss_and_grad`` and one Adam
step on a random batch and prints a line. The suite measures the wall time from
just before it starts the process to the moment that line arrives: interpreter
start, imports, Numba's compilation or cache load, workspace allocation and the
step. We time this driver rather than ``numrnn train`` because ``numrnn train``
has no signal for "first step finished" and it also reads MNIST and evaluates,
which would be counted as startup; the difference is click's import and the data
load.

Time to first prediction (``python -m perf.startup first-predict MODEL``): imports
numrnn, loads a saved LSTM-128 row-MNIST model (``nr.load``) and predicts one
28 x 28 sequence, what a program embedding a trained model does on start.

For both, cold: ``NUMBA_CACHE_DIR`` is an empty temporary directory; warm: the same
directory again after a cold run filled it (with ``--quick``, the default cache,
which the suite's own run has just filled).

Peak memory (``python -m perf.startup memory numrnn|torch``): the RSS high-water
mark (VmHWM in /proc/self/status, or ru_maxrss elsewhere) of a process that imports
one library, builds the pixel-MNIST LSTM-128 model (B=128, T=784, F=1) and runs
two training steps; the high-water mark after the imports and the model is
reported too, so that the step's own share is visible.
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def _maxrss_mib():
    """This process's peak resident set size in MiB. Linux: VmHWM, because ru_maxrss keeps
    the peak of the process before its exec, here the forking suite's (gigabytes)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0                    # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0     # Linux: KiB


def first_step_driver():
    start = time.perf_counter()
    import numpy as np

    import numrnn as nr
    imported = time.perf_counter()
    model = nr.SequenceModel(28, [nr.LSTM(128)], head=nr.heads.Classify(10), seed=0)
    opt = nr.Adam(model, lr=1e-3)
    rng = np.random.default_rng(0)
    x = rng.random((64, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    loss = model.loss_and_grad(x, y)
    opt.step()
    done = time.perf_counter()
    if not np.isfinite(loss):
        raise SystemExit(f"first step: non-finite loss {loss}")
    print(json.dumps({"import_s": imported - start, "build_and_step_s": done - imported, "loss": loss}), flush=True)


def first_predict_driver(path):
    start = time.perf_counter()
    import numpy as np

    import numrnn as nr
    imported = time.perf_counter()
    model = nr.load(path)
    loaded = time.perf_counter()
    probs = model.predict(np.random.default_rng(0).random((1, 28, 28)).astype(np.float32))
    done = time.perf_counter()
    print(json.dumps({"import_s": imported - start, "load_s": loaded - imported, "predict_s": done - loaded,
                      "label": int(probs.argmax())}), flush=True)


def _predict_model(directory):
    """Save the model the first-predict driver loads; returns its path."""
    import numrnn as nr
    path = os.path.join(directory, "model.npz")
    nr.save(nr.SequenceModel(28, [nr.LSTM(128)], head=nr.heads.Classify(10), seed=0), path)
    return path


def memory_driver(library):
    import numpy as np
    rng = np.random.default_rng(0)
    B, T = 128, 784
    x = ((rng.random((B, T, 1)) < 0.2) * rng.random((B, T, 1))).astype(np.float32)
    y = rng.integers(0, 10, B)
    if library == "numrnn":
        import numrnn as nr
        model = nr.SequenceModel(1, [nr.LSTM(128, forget_bias=0.0)], head=nr.heads.Classify(10), seed=0)
        opt = nr.Adam(model, lr=1e-3)
        before = _maxrss_mib()
        for _ in range(2):
            loss = model.loss_and_grad(x, y)
            opt.step()
    else:
        import torch
        rnn, head = torch.nn.LSTM(1, 128, batch_first=True), torch.nn.Linear(128, 10)
        opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=1e-3)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        before = _maxrss_mib()
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            out, _ = rnn(xt)
            lt = torch.nn.functional.cross_entropy(head(out[:, -1]), yt)
            lt.backward()
            opt.step()
            loss = lt.item()
    if not np.isfinite(loss):
        raise SystemExit(f"memory {library}: non-finite loss {loss}")
    print(json.dumps({"maxrss_before_step_mib": before, "maxrss_mib": _maxrss_mib(), "loss": float(loss)}),
          flush=True)


# ----------------------------------------------------------------------------- run from the suite

def _child_env(base_env, **extra):
    env = dict(base_env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def time_first_line(base_env, driver_args, cache_dir=None, timeout=600):
    """Seconds from process start to the driver's line, and the driver's report."""
    extra = {"NUMBA_CACHE_DIR": cache_dir} if cache_dir else {}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "perf.startup", *driver_args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_child_env(base_env, **extra))
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    _, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"{driver_args[0]} driver failed (exit {proc.returncode}): {err[-2000:]}")
    return elapsed, json.loads(line)


def first_line_samples(base_env, mode, cold_reps, warm_reps):
    """Timings of the ``mode`` driver ("first-step" or "first-predict"):
    {"cold": [s...], "warm": [s...], "reports": [...]}; warm runs reuse the cache
    directory of the last cold run (or the default cache when cold_reps is 0)."""
    out = {"cold": [], "warm": [], "reports": []}
    tmp = tempfile.mkdtemp(prefix="numrnn-perf-cache-")
    driver_args = [mode] + ([_predict_model(tmp)] if mode == "first-predict" else [])
    cache = None
    for i in range(cold_reps):
        cache = os.path.join(tmp, f"cold{i}")
        os.makedirs(cache)
        s, report = time_first_line(base_env, driver_args, cache)
        out["cold"].append(s)
        out["reports"].append({"cache": "cold", **report})
    for _ in range(warm_reps):
        s, report = time_first_line(base_env, driver_args, cache)
        out["warm"].append(s)
        out["reports"].append({"cache": "warm" if cache else "default", **report})
    out["warm_cache"] = "the last cold run's directory" if cache else "the default cache (filled by this run)"
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def peak_memory(base_env, library, timeout=900):
    proc = subprocess.run([sys.executable, "-m", "perf.startup", "memory", library], capture_output=True,
                          text=True, env=_child_env(base_env), timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory driver ({library}) failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if sys.argv[1] == "first-step":
        first_step_driver()
    elif sys.argv[1] == "first-predict":
        first_predict_driver(sys.argv[2])
    elif sys.argv[1] == "memory":
        memory_driver(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
