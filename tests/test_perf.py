"""perf/: the regression gate's rule on synthetic results, the FLOP formulas, and the
numrnn-to-torch weight mapping of the benchmark cases. No timing is asserted."""
import json
import sys

import numpy as np
import pytest

from perf import compare, flops


def side(median, rel_iqr, n=9):
    """A summary whose samples have an IQR of rel_iqr * median."""
    half = rel_iqr * median / 2
    return {"median": median, "p25": median - half, "p75": median + half, "min": median - 2 * half,
            "max": median + 2 * half, "n": n, "samples": [median] * n}


def result(ratio, rel_iqr=0.02, name="train row lstm", threads=2):
    ours = 0.010
    return {"created": "x", "cases": [{"name": name, "threads": threads, "numrnn": side(ours, rel_iqr),
                                       "torch_best": side(ours * ratio, rel_iqr), "ratio_best": ratio}]}


def test_regression_beyond_noise_is_flagged():
    rows, only = compare.compare(result(1.5), result(1.0))
    assert not only
    assert len(rows) == 1 and rows[0]["regressed"]
    assert rows[0]["change"] == pytest.approx(1.0 / 1.5 - 1.0)


def test_change_within_noise_is_not_flagged():
    # 8% slower, but each side's samples spread by 30%: threshold 3 * sqrt(4) * 0.93 * 0.3 / 3 = 0.37
    rows, _ = compare.compare(result(1.5, rel_iqr=0.3), result(1.38, rel_iqr=0.3))
    assert not rows[0]["regressed"]
    assert rows[0]["threshold"] == pytest.approx(3 * 2 * 0.93 * 0.3 / 3)


def test_floor_applies_when_spread_is_tiny():
    rows, _ = compare.compare(result(1.5, rel_iqr=0.0), result(1.46, rel_iqr=0.0))     # -2.7%
    assert rows[0]["threshold"] == compare.FLOOR and not rows[0]["regressed"]
    rows, _ = compare.compare(result(1.5, rel_iqr=0.0), result(1.3, rel_iqr=0.0))      # -13%
    assert rows[0]["regressed"]


def test_improvement_and_unmatched_cases_do_not_fail(tmp_path):
    base, new = result(1.0), result(2.0)
    new["cases"].append(result(1.0, name="ctc T100 B32 C28 S20")["cases"][0])
    paths = []
    for name, data in (("base.json", base), ("new.json", new)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(data))
    lines = []
    assert compare.main(str(paths[0]), str(paths[1]), out=lines.append) == 0
    assert any("only in one file: ctc" in line for line in lines)
    assert compare.main(str(paths[1]), str(paths[0]), out=lines.append) == 1


def test_cases_without_torch_compare_their_time():
    base = {"cases": [{"name": "a", "threads": 1, "numrnn": side(0.010, 0.01)}],
            "startup": [{"threads": 2, "warm": side(2.0, 0.01), "cold": side(30.0, 0.01)}]}
    new = {"cases": [{"name": "a", "threads": 1, "numrnn": side(0.012, 0.01)}],
           "startup": [{"threads": 2, "warm": side(2.0, 0.01), "cold": side(40.0, 0.01)}]}
    rows = {r["name"]: r for r in compare.compare(base, new)[0]}
    assert rows["a"]["regressed"] and rows["first step, cold cache"]["regressed"]
    assert not rows["first step, warm cache"]["regressed"]


def test_flops_of_row_mnist_lstm():
    T, B, F, H = 28, 128, 28, 128
    G = 4 * H
    assert flops.forward_flops("lstm", T, B, F, H) == 2 * T * B * G * (F + H) == 572_522_496
    head = 2 * B * H * 10 * 3
    assert flops.step_flops("lstm", T, B, F, H) == 2 * T * B * G * (F + H) + 2 * T * B * G * (F + 2 * H) + head


@pytest.mark.parametrize("cell, gates", [("lstm", 4), ("gru", 3), ("rnn", 1)])
def test_flops_of_two_layers_count_dx_of_the_second(cell, gates):
    T, B, F, H, n = 5, 3, 2, 4, 1
    G = gates * H
    one = flops.step_flops(cell, T, B, F, H, layers=1, out=n)
    two = flops.step_flops(cell, T, B, F, H, layers=2, out=n)
    second = 2 * T * B * G * (H + H) + 2 * T * B * G * (H + 2 * H) + 2 * T * B * G * H
    assert two - one == second
    # the step's GEMMs agree with the closed form
    assert flops.gemm_flops(flops.layer_gemms(cell, T, B, F, H, need_dx=False)) == \
        2 * T * B * G * (F + H) + 2 * T * B * G * (F + 2 * H)


def test_case_weights_match_torch():
    """The benchmark's numrnn-to-torch mapping gives the same loss and gradients
    (what `python -m perf run` checks before it times)."""
    pytest.importorskip("torch")
    from perf import cases, torch_side
    for cell in ("lstm", "gru", "rnn"):
        spec = dict(name=f"tiny {cell}", kind="train", cell=cell, layers=2, B=3, T=4, F=2, H=5,
                    head="classify", out=3)
        data = cases.make_data(spec)
        ours = cases.NumrnnCase(spec, data)
        reference = torch_side.build(spec, ours.weights, data, "default").check()
        err, _ = cases.compare_results(spec, ours.check(), reference)
        assert err < 1e-4


def test_thread_scaling_alternates_both_counts(monkeypatch):
    """The alternating measurement times as many steps on each count, on the thread
    count it claims, and reports the ratio of the medians. No timing is asserted."""
    from perf import suite
    counts = []
    monkeypatch.setattr(suite, "SETTLE_S", 0.0)
    monkeypatch.setattr(suite, "set_threads", lambda n: counts.append(n))
    rec = suite.thread_scaling(2, rounds=3)
    assert counts[-6:] == [2, 1, 2, 1, 2, 1]
    assert rec["one_thread"]["n"] == rec["threads_n"]["n"] == 3
    assert rec["speedup"] == pytest.approx(rec["one_thread"]["median"] / rec["threads_n"]["median"])
    assert "1 and 2 threads alternating" in suite.format_report(
        {"created": "x", "machine": {"cpu": "c", "cpu_count": 2}, "load_start": [], "load_end": [], "cases": [],
         "scaling": [rec]})


def test_round_ratio_sees_through_a_slow_spell():
    """A spell that slows both sides threefold from round 5 on (for PyTorch from
    round 6: it began between the two samples) moves the ratio of medians to 0.43;
    the median of the rounds' own ratios stays at the true 1.3."""
    from perf import suite
    ours = 0.010 * np.array([1.0] * 5 + [3.0] * 6)
    theirs = 0.013 * np.array([1.0] * 6 + [3.0] * 5)
    r = suite.ratios({"numrnn": list(ours), "torch_best": list(theirs)})
    assert r["round_ratio_best"] == pytest.approx(1.3)
    assert r["ratio_best"] == pytest.approx(0.013 / 0.030)
    assert "ratio_default" not in r


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_torch_worker_starts_with_numrnns_allocator_thresholds(monkeypatch):
    """PyTorch at its best is spared the page faults that PyTorch default, in the
    suite's process, is spared (numrnn.memory); a user's own setting is kept."""
    pytest.importorskip("torch")
    from numrnn import memory
    from perf import suite
    clean = {k: v for k, v in suite.USER_ENV.items() if k not in memory._USER_SETTINGS}
    monkeypatch.setattr(suite, "USER_ENV", clean)
    monkeypatch.setattr(suite, "WORKER_ALLOCATOR_ENV", memory.freed_memory_environment(clean))
    worker = suite.Worker()
    try:
        with open(f"/proc/{worker.proc.pid}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if item)
        assert worker.request("threads", 1) == 1
    finally:
        worker.close()
    assert env[b"MALLOC_MMAP_THRESHOLD_"] == str(memory.MMAP_THRESHOLD).encode()
    assert env[b"MALLOC_TRIM_THRESHOLD_"] == str(memory.TRIM_THRESHOLD).encode()
    assert memory.freed_memory_environment({**clean, "MALLOC_MMAP_THRESHOLD_": "65536"}) == {}
