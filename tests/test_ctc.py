"""numrnn.ctc: loss and gradient against brute force, PyTorch and finite differences;
greedy and prefix-beam decoding against exhaustive search; argument errors; metrics."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import central_differences, relative_error
from numrnn import ctc
from numrnn.kernels.common import ParallelKernel
from reference import ctc_brute


def pad_labels(seqs, S=None):
    """(labels (B, S) padded with -1, label_lengths (B,)) from a list of label lists."""
    S = max((len(s) for s in seqs), default=0) if S is None else S
    labels = np.full((len(seqs), S), -1, np.int64)
    for b, s in enumerate(seqs):
        labels[b, :len(s)] = s
    return labels, np.array([len(s) for s in seqs], np.int64)


def random_labels(rng, n, C, blank, repeat=0.0):
    """n labels in [0, C) other than blank; each repeats the previous one with probability
    repeat, and otherwise differs from it (when C > 2)."""
    choices = [k for k in range(C) if k != blank]
    out = []
    for _ in range(n):
        if out and rng.random() < repeat:
            out.append(out[-1])
        else:
            others = [k for k in choices if not out or k != out[-1]] or choices
            out.append(int(rng.choice(others)))
    return out


def min_steps(seq):
    """Fewest steps that can emit seq: one per label plus a blank between equal neighbours."""
    return len(seq) + sum(a == b for a, b in zip(seq, seq[1:]))


# ----------------------------------------------------------------------------- brute force

# (T, C, blank, logit length, labels): repeats, empty labels, T = 0 and 1, tight and
# impossible alignments, blanks other than 0.
BRUTE_CASES = [
    (4, 3, 0, 4, [1, 2]),
    (4, 3, 0, 4, [1, 1]),
    (4, 3, 0, 3, [1, 1]),          # tight: 1, blank, 1
    (4, 3, 0, 2, [1, 1]),          # impossible: the repeat needs a blank
    (5, 3, 0, 5, []),
    (5, 3, 0, 0, []),              # no steps, no labels: probability 1
    (5, 3, 0, 1, [2]),
    (5, 4, 2, 5, [0, 3, 3]),
    (5, 4, 3, 5, [0, 0, 1]),
    (5, 4, 1, 3, [0, 2, 3]),       # S = T
    (5, 4, 0, 5, [3, 1, 3, 2]),
    (5, 3, 2, 5, [1, 1, 1]),       # tight: 1, 2, 1, 2, 1
]


def run_batch(cases, seed=0):
    """One float64 batch from BRUTE_CASES-like rows sharing C: (logits, labels, lengths, label_lengths)."""
    rng = np.random.default_rng(seed)
    T = max(c[0] for c in cases)
    C = cases[0][1]
    logits = rng.standard_normal((len(cases), T, C))
    labels, label_lengths = pad_labels([c[4] for c in cases])
    lengths = np.array([c[3] for c in cases])
    return logits, labels, lengths, label_lengths


@pytest.mark.parametrize("C", [3, 4])
def test_loss_and_grad_match_brute_force(C):
    cases = [c for c in BRUTE_CASES if c[1] == C]
    for blank in sorted({c[2] for c in cases}):
        group = [c for c in cases if c[2] == blank]
        logits, labels, lengths, label_lengths = run_batch(group, seed=blank)
        loss, grad = ctc.loss_and_grad(logits, labels, lengths, label_lengths, blank=blank)
        assert loss.dtype == grad.dtype == np.float64
        for b, (_, _, _, Tb, seq) in enumerate(group):
            ref_loss, ref_grad = ctc_brute.loss_and_grad(logits[b, :Tb], seq, blank)
            if math.isinf(ref_loss):
                assert loss[b] == np.inf
            else:
                np.testing.assert_allclose(loss[b], ref_loss, rtol=1e-10, atol=1e-14)
            assert relative_error(ref_grad, grad[b, :Tb], floor=1e-12) < 1e-10, (group[b], blank)
            assert np.all(grad[b, Tb:] == 0.0)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_tiny_cases_match_brute_force(data):
    C = data.draw(st.integers(1, 4), label="C")
    T = data.draw(st.integers(0, 5 if C < 4 else 4), label="T")
    blank = data.draw(st.integers(0, C - 1), label="blank")
    others = [k for k in range(C) if k != blank]
    seq = data.draw(st.lists(st.sampled_from(others), max_size=T) if others else st.just([]), label="labels")
    scale = data.draw(st.sampled_from([0.3, 1.0, 4.0]), label="scale")
    logits = scale * np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).standard_normal((1, T, C))
    labels, label_lengths = pad_labels([seq], S=T)
    loss, grad = ctc.loss_and_grad(logits, labels, [T], label_lengths, blank=blank)
    ref_loss, ref_grad = ctc_brute.loss_and_grad(logits[0], seq, blank)
    assert (loss[0] == np.inf) == math.isinf(ref_loss)
    if not math.isinf(ref_loss):
        np.testing.assert_allclose(loss[0], ref_loss, rtol=1e-10, atol=1e-14)
    assert relative_error(ref_grad, grad[0], floor=1e-12) < 1e-10


def test_impossible_alignment_inf_or_zero():
    logits, labels, lengths, label_lengths = run_batch([(4, 3, 0, 3, [1, 1, 2]), (4, 3, 0, 4, [1, 2])])
    loss, grad = ctc.loss_and_grad(logits, labels, lengths, label_lengths)
    assert loss[0] == np.inf and np.all(grad[0] == 0.0)
    assert np.isfinite(loss[1]) and np.any(grad[1] != 0.0)
    loss_z, grad_z = ctc.loss_and_grad(logits, labels, lengths, label_lengths, zero_infinity=True)
    assert loss_z[0] == 0.0 and np.all(grad_z[0] == 0.0)
    assert loss_z[1] == loss[1] and np.array_equal(grad_z[1], grad[1])


def test_gradient_rows_sum_to_zero_and_padding_is_ignored(rng):
    """softmax - occupancy sums to 0 over the classes; padded steps read nothing (NaN there
    is fine) and get exactly 0."""
    logits = rng.standard_normal((3, 7, 5))
    lengths = np.array([7, 4, 0])
    labels, label_lengths = pad_labels([[1, 2, 2], [4, 3], []])
    loss, grad = ctc.loss_and_grad(logits, labels, lengths, label_lengths)
    noisy = logits.copy()
    noisy[1, 4:] = np.nan
    noisy[2] = np.inf
    loss2, grad2 = ctc.loss_and_grad(noisy, labels, lengths, label_lengths)
    assert np.array_equal(loss, loss2) and np.array_equal(grad, grad2)
    assert loss[2] == 0.0
    np.testing.assert_allclose(grad.sum(axis=2), 0.0, atol=1e-14)
    assert np.all(grad[1, 4:] == 0.0) and np.all(grad[2] == 0.0)


def test_probabilities_beyond_float64_are_exact():
    """One feasible path (S = T labels, no repeats) under a blank 1000 above every label:
    p = prod_t y_t(l_t) is about exp(-1000 T), far below float64, so the sequence is
    computed in log space; its loss and gradient have closed forms. The other sequence
    of the batch stays on the rescaled recursion and is unaffected."""
    T, C = 5, 4
    seq = [1, 2, 3, 1, 2]
    logits = np.zeros((2, T, C))
    logits[0, :, 0] = 1000.0
    logits[1] = np.random.default_rng(0).standard_normal((T, C))
    labels, label_lengths = pad_labels([seq, [3, 1]])
    loss, grad = ctc.loss_and_grad(logits, labels, None, label_lengths)
    log_y = logits[0] - np.log(np.exp(logits[0] - 1000.0).sum(axis=1, keepdims=True)) - 1000.0
    np.testing.assert_allclose(loss[0], -log_y[np.arange(T), seq].sum(), rtol=1e-14)
    expected = np.exp(log_y)
    expected[np.arange(T), seq] -= 1.0
    np.testing.assert_allclose(grad[0], expected, rtol=1e-14, atol=1e-300)
    alone = ctc.loss_and_grad(logits[1:], labels[1:], None, label_lengths[1:])
    assert loss[1] == alone[0][0] and np.array_equal(grad[1], alone[1][0])


def test_float32_is_computed_in_float64(rng):
    """float32 in and out, but the recursion is float64: the float32 result is the float64
    result of the same (rounded) inputs, rounded once."""
    logits = rng.standard_normal((2, 300, 6)).astype(np.float32)
    labels, label_lengths = pad_labels([random_labels(rng, 80, 6, 0, 0.2), random_labels(rng, 30, 6, 0)])
    loss32, grad32 = ctc.loss_and_grad(logits, labels, None, label_lengths)
    loss64, grad64 = ctc.loss_and_grad(logits.astype(np.float64), labels, None, label_lengths)
    assert loss32.dtype == grad32.dtype == np.float32
    assert np.array_equal(loss32, loss64.astype(np.float32))
    assert np.array_equal(grad32, grad64.astype(np.float32))


def test_loss_without_gradient_and_time_major(rng):
    logits = rng.standard_normal((3, 6, 4))
    lengths = np.array([6, 5, 2])
    labels, label_lengths = pad_labels([[1, 1, 3], [2], [3, 1]])
    loss, grad = ctc.loss_and_grad(logits, labels, lengths, label_lengths, blank=0)
    assert np.array_equal(ctc.loss(logits, labels, lengths, label_lengths), loss)
    tm = np.ascontiguousarray(logits.transpose(1, 0, 2))
    loss_tm, grad_tm = ctc.loss_and_grad(tm, labels, lengths, label_lengths, time_major=True)
    assert grad_tm.shape == (6, 3, 4)
    assert np.array_equal(loss_tm, loss) and np.array_equal(grad_tm, grad.transpose(1, 0, 2))
    labels_tm, scores_tm = ctc.beam_decode(tm, lengths, beam=4, time_major=True)
    labels_bm, scores_bm = ctc.beam_decode(logits, lengths, beam=4)
    assert labels_tm == labels_bm and np.array_equal(scores_tm, scores_bm)


def test_lengths_default_to_full():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((2, 5, 4))
    labels = np.array([[1, 2], [3, 3]])
    loss = ctc.loss(logits, labels, None, None)
    np.testing.assert_array_equal(loss, ctc.loss(logits, labels, [5, 5], [2, 2]))


# ----------------------------------------------------------------------------- finite differences

def test_gradient_matches_central_differences(rng):
    B, T, C = 3, 6, 4
    logits = rng.standard_normal((B, T, C))
    lengths = np.array([6, 4, 1])
    labels, label_lengths = pad_labels([[1, 1, 2], [3, 2], [1]])
    weights = rng.standard_normal(B)       # a scalar: sum_b weights[b] loss[b]

    def f():
        return float(ctc.loss(logits, labels, lengths, label_lengths, blank=0) @ weights)

    _, grad = ctc.loss_and_grad(logits, labels, lengths, label_lengths, blank=0)
    numeric = central_differences(f, logits)
    assert relative_error(numeric, grad * weights[:, None, None]) < 1e-6


# ----------------------------------------------------------------------------- PyTorch

def torch_ctc(logits, labels, lengths, label_lengths, blank, zero_infinity):
    """torch.nn.functional.ctc_loss(reduction='none') of log_softmax(logits) and its gradient
    with respect to the logits (autograd), in the logits' dtype."""
    torch = pytest.importorskip("torch")
    x = torch.tensor(logits, requires_grad=True)
    loss = torch.nn.functional.ctc_loss(x.log_softmax(2).transpose(0, 1), torch.tensor(np.maximum(labels, 0)),
                                        torch.tensor(lengths), torch.tensor(label_lengths), blank=blank,
                                        reduction="none", zero_infinity=zero_infinity)
    loss.sum().backward()
    return loss.detach().numpy(), x.grad.numpy()


def torch_cases(rng, kind):
    """(logits (B, T, C) float64, labels, lengths, label_lengths, blank, zero_infinity)."""
    if kind == "long":                      # T = 2000, long labels with repeats
        T, C, blank = 2000, 12, 0
        lengths = np.array([2000, 1500, 1999])
        seqs = [random_labels(rng, 400, C, blank, 0.3), random_labels(rng, 700, C, blank, 0.1),
                random_labels(rng, 40, C, blank)]
        zero_inf = False
    else:
        T, C = 30, 6
        blank = {"random": 0, "blank_last": C - 1, "blank_mid": 2, "zero_infinity": 0, "extreme": 0}[kind]
        lengths = rng.integers(1, T + 1, size=8)
        lengths[0] = T
        seqs = []
        for Tb in lengths:
            S = int(rng.integers(0, Tb + 1))
            seq = random_labels(rng, S, C, blank, 0.3)
            while min_steps(seq) > Tb:      # drop labels until it fits
                seq.pop()
            seqs.append(seq)
        seqs[1] = []                                            # empty labels
        seqs[2] = random_labels(rng, lengths[2], C, blank)      # S = T, no repeats
        lengths[3] = 9                                          # tight with repeats: 5 labels + 4 blanks
        seqs[3] = [1, 1, 1, 1, 1] if blank != 1 else [3, 3, 3, 3, 3]
        lengths[4] = 8                                          # impossible: needs 9 steps
        seqs[4] = seqs[3]
        zero_inf = kind == "zero_infinity"
    # "extreme": logits hundreds apart, beyond the rescaled recursion's float64 range, so
    # that some sequences take the log-space one.
    logits = (300.0 if kind == "extreme" else 2.0) * rng.standard_normal((len(lengths), T, C))
    labels, label_lengths = pad_labels(seqs)
    return logits, labels, lengths, label_lengths, blank, zero_inf


TORCH_KINDS = ["random", "blank_last", "blank_mid", "zero_infinity", "long", "extreme"]


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-6), (np.float32, 1e-4)])
@pytest.mark.parametrize("kind", TORCH_KINDS)
def test_against_torch(kind, dtype, tol):
    rng = np.random.default_rng(TORCH_KINDS.index(kind))
    logits, labels, lengths, label_lengths, blank, zero_inf = torch_cases(rng, kind)
    logits = logits.astype(dtype)
    loss, grad = ctc.loss_and_grad(logits, labels, lengths, label_lengths, blank=blank, zero_infinity=zero_inf)
    assert loss.dtype == grad.dtype == dtype
    # torch in float64 on the same (rounded) inputs; and torch in float32 too, except at
    # T = 2000 where its float32 log-likelihood drifts and its gradient is off by ~1e-2, and
    # for logits hundreds apart, where its float32 gradient is off by ~1e-3.
    references = [np.float64] + ([np.float32] if dtype == np.float32 and kind not in ("long", "extreme") else [])
    for ref_dtype in references:
        ref_loss, ref_grad = torch_ctc(logits.astype(ref_dtype), labels, lengths, label_lengths, blank, zero_inf)
        for b in range(len(lengths)):
            if not zero_inf and np.isinf(ref_loss[b]):
                assert loss[b] == np.inf and np.all(grad[b] == 0.0)     # torch's gradient is NaN here
                continue
            np.testing.assert_allclose(loss[b], ref_loss[b], rtol=tol, atol=tol)
            assert relative_error(ref_grad[b], grad[b], floor=1e-3) < tol, (b, ref_dtype)
            assert np.all(grad[b, lengths[b]:] == 0.0)
    if kind != "long":
        assert np.isinf(ref_loss[4]) == (not zero_inf) and np.isfinite(loss[3])


# ----------------------------------------------------------------------------- decoding

def peaked_logits(rng, B, T, C, sharpness):
    """Random logits whose most probable class at each step stands out by about sharpness."""
    logits = rng.standard_normal((B, T, C))
    winners = rng.integers(0, C, size=(B, T))
    np.put_along_axis(logits, winners[..., None], sharpness, axis=2)
    return logits


@pytest.mark.parametrize("blank", [0, 2])
def test_greedy_is_the_best_path(rng, blank):
    logits = rng.standard_normal((6, 5, 3))
    lengths = np.array([5, 4, 3, 1, 0, 5])
    labels, scores = ctc.greedy_decode(logits, lengths, blank=blank)
    for b, Tb in enumerate(lengths):
        ref_labels, ref_score = ctc_brute.best_path(logits[b, :Tb], blank)
        assert labels[b] == list(ref_labels)
        np.testing.assert_allclose(scores[b], ref_score, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("blank, sharpness", [(0, 0.0), (1, 0.0), (2, 1.5)])
def test_beam_finds_the_most_probable_labelling(blank, sharpness):
    """With a beam at least as wide as the number of prefixes (31 for T = 4, two labels)
    nothing is pruned: the result is the labelling of largest p(l | x), and its score is
    log p(l | x) summed over all its paths."""
    rng = np.random.default_rng(10 + blank)
    B, T, C = 12, 4, 3
    logits = peaked_logits(rng, B, T, C, sharpness)
    lengths = np.array([4] * (B - 3) + [3, 1, 0])
    labels, scores = ctc.beam_decode(logits, lengths, beam=31, blank=blank)
    for b, Tb in enumerate(lengths):
        probs = ctc_brute.labelling_log_probs(logits[b, :Tb], blank)
        best = max(probs, key=probs.get)
        assert labels[b] == list(best), b
        np.testing.assert_allclose(scores[b], probs[best], rtol=1e-12, atol=1e-14)


def test_default_beam_on_tiny_problems():
    """A beam of 16 finds the most probable labelling on these problems, and its score is
    at most the labelling's exact log-probability (pruning can only lose paths)."""
    rng = np.random.default_rng(7)
    B, T, C = 16, 5, 3
    logits = peaked_logits(rng, B, T, C, 1.0)
    labels, scores = ctc.beam_decode(logits, None, blank=0)
    for b in range(B):
        probs = ctc_brute.labelling_log_probs(logits[b], 0)
        best = max(probs, key=probs.get)
        assert labels[b] == list(best), b
        assert scores[b] <= probs[best] + 1e-12


def test_greedy_equals_beam_width_one(rng):
    """On peaked outputs the single kept prefix follows the best path: same labels, and the
    prefix's probability includes the best path's. With one step both scores are log max_k y_k."""
    logits = peaked_logits(rng, 20, 40, 6, 6.0)
    lengths = rng.integers(0, 41, size=20)
    for blank in (0, 5):
        g_labels, g_scores = ctc.greedy_decode(logits, lengths, blank=blank)
        b_labels, b_scores = ctc.beam_decode(logits, lengths, beam=1, blank=blank)
        assert g_labels == b_labels
        assert np.all(g_scores <= b_scores + 1e-12)
    one = rng.standard_normal((5, 1, 4))
    for blank in range(4):
        g_labels, g_scores = ctc.greedy_decode(one, None, blank=blank)
        b_labels, b_scores = ctc.beam_decode(one, None, beam=1, blank=blank)
        assert g_labels == b_labels
        np.testing.assert_allclose(g_scores, b_scores, rtol=1e-15)


def test_beam_decodes_long_sequences(rng):
    """T = 500 with a small beam: runs within its workspaces and agrees with greedy on
    sharply peaked outputs."""
    logits = peaked_logits(rng, 3, 500, 10, 12.0)
    g_labels, _ = ctc.greedy_decode(logits, None)
    b_labels, b_scores = ctc.beam_decode(logits, None, beam=8)
    assert g_labels == b_labels and np.all(b_scores <= 0.0)


# ----------------------------------------------------------------------------- serial vs parallel

def test_serial_build_equals_parallel_build(request):
    rng = np.random.default_rng(5)
    B, T, C = 9, 40, 7
    logits = rng.standard_normal((B, T, C))
    lengths = rng.integers(0, T + 1, size=B)
    seqs = [random_labels(rng, int(rng.integers(0, Tb // 2 + 1)), C, 3, 0.3) for Tb in lengths]
    seqs[0] = [1, 1, 1] if lengths[0] < 5 else seqs[0]
    labels, label_lengths = pad_labels(seqs)
    lengths = np.maximum(lengths, label_lengths)

    def everything():
        loss, grad = ctc.loss_and_grad(logits, labels, lengths, label_lengths, blank=3)
        return loss, grad, ctc.greedy_decode(logits, lengths, blank=3), ctc.beam_decode(logits, lengths, 5, 3)

    parallel = everything()
    request.getfixturevalue("serial_kernels")
    assert ParallelKernel.serial
    serial = everything()
    assert np.array_equal(serial[0], parallel[0]) and np.array_equal(serial[1], parallel[1])
    for s, p in zip(serial[2:], parallel[2:]):
        assert s[0] == p[0] and np.array_equal(s[1], p[1])


# ----------------------------------------------------------------------------- errors

def good_args():
    logits = np.zeros((2, 4, 3))
    labels = np.array([[1, 2], [2, 2]])
    return dict(logits=logits, labels=labels, logit_lengths=np.array([4, 3]), label_lengths=np.array([2, 2]))


def bad(**changes):
    args = good_args()
    args.update(changes)
    return args


ERRORS = {
    "logits rank": (bad(logits=np.zeros((2, 4))), r"logits must have rank 3 \(B, T, C\), got shape \(2, 4\)"),
    "logits dtype": (bad(logits=np.zeros((2, 4, 3), np.int64)), r"logits must be float32 or float64.*int64"),
    "logits nan": (bad(logits=np.where(np.arange(3) == 2, np.nan, np.zeros((2, 4, 3)))),
                   r"logits\[0, 0, 2\] = nan \(sequence 0\) is not finite"),
    "logits inf late": (bad(logits=np.pad(np.zeros((2, 3, 3)), ((0, 0), (0, 1), (0, 0)), constant_values=np.inf)),
                        r"logits\[0, 3, 0\] = inf \(sequence 0\) is not finite"),
    "labels rank": (bad(labels=np.array([1, 2])), r"labels must have shape \(B, S\) = \(2, S\).*\(2,\)"),
    "labels batch": (bad(labels=np.ones((3, 2), np.int64)), r"labels must have shape .*\(3, 2\)"),
    "labels float": (bad(labels=np.ones((2, 2))), r"labels must be integers, got dtype float64"),
    "label is blank": (bad(labels=np.array([[1, 2], [2, 0]])), r"labels\[1, 1\] = 0 \(sequence 1\) equals blank = 0"),
    "label negative": (bad(labels=np.array([[1, -1], [2, 2]])),
                       r"labels\[0, 1\] = -1 \(sequence 0\) is outside \[0, 3\)"),
    "label too large": (bad(labels=np.array([[1, 2], [3, 2]])),
                        r"labels\[1, 0\] = 3 \(sequence 1\) is outside \[0, 3\)"),
    "label longer than logits": (bad(logit_lengths=np.array([4, 1])),
                                 r"label_lengths\[1\] = 2 exceeds logit_lengths\[1\] = 1: sequence 1"),
    "logit length negative": (bad(logit_lengths=np.array([4, -1])),
                              r"logit_lengths\[1\] = -1 is out of range: it must be in \[0, 4\]"),
    "logit length too large": (bad(logit_lengths=np.array([5, 3])),
                               r"logit_lengths\[0\] = 5 is out of range: it must be in \[0, 4\]"),
    "logit lengths shape": (bad(logit_lengths=np.array([4, 3, 2])),
                            r"logit_lengths must have shape \(2,\), got \(3,\)"),
    "logit lengths float": (bad(logit_lengths=np.array([4.0, 3.0])),
                            r"logit_lengths must be integers, got dtype float64"),
    "label length too large": (bad(label_lengths=np.array([2, 3])),
                               r"label_lengths\[1\] = 3 is out of range: it must be in \[0, 2\]"),
    "label length negative": (bad(label_lengths=np.array([-2, 1])),
                              r"label_lengths\[0\] = -2 is out of range"),
    "blank too large": (bad(blank=3), r"blank = 3 is out of range: it must be in \[0, 3\)"),
    "blank negative": (bad(blank=-1), r"blank = -1 is out of range"),
    "blank float": (bad(blank=0.0), r"blank must be an integer, got 0.0"),
    "zero_infinity": (bad(zero_infinity="yes"), r"zero_infinity must be True or False, got 'yes'"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_loss_errors(case):
    args, message = ERRORS[case]
    with pytest.raises(ValueError, match=message):
        ctc.loss_and_grad(**args)


def test_padding_of_labels_is_not_checked():
    args = good_args()
    args["labels"] = np.array([[1, 2, -7], [2, 1, 99]])
    loss, _ = ctc.loss_and_grad(**args)
    assert np.all(np.isfinite(loss))


def test_label_sequences_of_different_lengths_are_padded():
    # What the decoders return can be passed back as labels, as a list of lists.
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((3, 12, 5))
    ragged = [[1, 2, 2], [], np.array([4, 1, 2, 3, 1])]
    padded = np.array([[1, 2, 2, 0, 0], [0, 0, 0, 0, 0], [4, 1, 2, 3, 1]])
    want = ctc.loss_and_grad(logits, padded, None, np.array([3, 0, 5]))
    for label_lengths in (None, [3, 0, 5]):
        got = ctc.loss_and_grad(logits, ragged, None, label_lengths)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    with pytest.raises(ValueError, match=r"label_lengths = \[3, 0, 4\] must be None or the lengths"):
        ctc.loss_and_grad(logits, ragged, None, [3, 0, 4])
    with pytest.raises(ValueError, match=r"labels\[1\] must hold integers, got dtype float64"):
        ctc.loss_and_grad(logits[:2], [[1, 2], [1.5]], None, None)
    with pytest.raises(ValueError, match=r"labels\[1\] must be a sequence of labels, got shape \(1, 1\)"):
        ctc.loss_and_grad(logits[:2], [[1, 2], [[1]]], None, None)


def test_repeats_that_do_not_fit_are_inf_not_an_error():
    """S <= T but S + (repeats) > T: torch's behaviour, an infinite loss."""
    args = bad(labels=np.array([[1, 1], [2, 2]]), logit_lengths=np.array([4, 2]))
    loss, grad = ctc.loss_and_grad(**args)
    assert np.isfinite(loss[0]) and loss[1] == np.inf and np.all(grad[1] == 0.0)


@pytest.mark.parametrize("decode", [ctc.greedy_decode, ctc.beam_decode])
def test_decode_errors(decode):
    logits = np.zeros((2, 4, 3))
    with pytest.raises(ValueError, match=r"logits must have rank 3 \(T, B, C\)"):
        decode(logits[0], None, time_major=True)
    with pytest.raises(ValueError, match=r"logit_lengths\[1\] = 5 is out of range"):
        decode(logits, np.array([4, 5]))
    with pytest.raises(ValueError, match=r"blank = 3 is out of range"):
        decode(logits, None, blank=3)
    with pytest.raises(ValueError, match=r"logits\[1, 2, 0\] = nan \(sequence 1\)"):
        decode(np.where((np.arange(4) == 2)[:, None] & (np.arange(2) == 1)[:, None, None], np.nan, logits), None)
    if decode is ctc.beam_decode:
        with pytest.raises(ValueError, match=r"beam = 0 is out of range: it must be in >= 1"):
            decode(logits, None, beam=0)


# ----------------------------------------------------------------------------- metrics

def test_edit_distance_and_metrics():
    assert ctc.edit_distance([], []) == 0
    assert ctc.edit_distance([1, 2, 3], []) == 3
    assert ctc.edit_distance([], [4, 5]) == 2
    assert ctc.edit_distance([1, 2, 3], [1, 3]) == 1
    assert ctc.edit_distance([3, 1, 2], [1, 2, 3]) == 2
    assert ctc.edit_distance("kitten", "sitting") == 3
    predictions = [[1, 2, 3], [4], [], [5, 5]]
    references = [[1, 2, 3], [4, 4], [7], [5]]
    assert ctc.label_error_rate(predictions, references) == pytest.approx(3 / 7)
    assert ctc.sequence_accuracy(predictions, references) == 0.25
    assert ctc.sequence_accuracy([np.array([1, 2])], [(1, 2)]) == 1.0
    assert ctc.label_error_rate([[]], [[]]) == 0.0
    assert ctc.label_error_rate([[1]], [[]]) == math.inf
    with pytest.raises(ValueError, match="predictions has 1 sequences but references has 2"):
        ctc.label_error_rate([[1]], [[1], [2]])
    with pytest.raises(ValueError, match="at least one sequence"):
        ctc.sequence_accuracy([], [])
