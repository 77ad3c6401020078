"""What each cell option costs: a training step (forward + loss + backward) of the
model with the option, relative to the same cell without it.

    python -m perf.options [--batch 128] [--steps 28] [--features 28] [--hidden 128]
                           [--repeat 9] [--threads N]

Row-MNIST shape by default, float32, Classify(10) head. Cases run in rounds (every
case once per round) so that a slow spell of the shared machine hits them all; the
table gives the median, min and max per case and the median's ratio to the plain
cell of its family. Before timing, each case's float32 loss and gradients are
checked against the same model in float64.
"""
import argparse
import time

import numpy as np

import numrnn as nr

CASES = {
    "lstm": ("lstm", [nr.LSTM], {}, None),
    "lstm peepholes": ("lstm", [nr.LSTM], {"peepholes": True}, None),
    "lstm cell_clip": ("lstm", [nr.LSTM], {"cell_clip": 3.0}, None),
    "lstm proj=H/2": ("lstm", [nr.LSTM], {"proj": "half"}, None),
    "lstm proj=H/2 proj_clip": ("lstm", [nr.LSTM], {"proj": "half", "proj_clip": 3.0}, None),
    "lstm layer_norm": ("lstm", [nr.LSTM], {"layer_norm": True}, None),
    "lstm all options": ("lstm", [nr.LSTM], {"peepholes": True, "cell_clip": 3.0, "proj": "half",
                                              "proj_clip": 3.0, "layer_norm": True}, None),
    "lstm dropout 0.9": ("lstm", [nr.LSTM], {}, nr.Dropout(0.9, 0.9, 0.9)),
    "lstm variational 0.9": ("lstm", [nr.LSTM], {}, nr.Dropout(0.9, 0.9, 0.9, variational=True)),
    "gru": ("gru", [nr.GRU], {}, None),
    "gru layer_norm": ("gru", [nr.GRU], {"layer_norm": True}, None),
    "gru dropout 0.9": ("gru", [nr.GRU], {}, nr.Dropout(0.9, 0.9, 0.9)),
    "gru reset_after": ("gru_ra", [nr.GRU], {"reset_after": True}, None),
    "gru reset_after dropout 0.9": ("gru_ra", [nr.GRU], {"reset_after": True}, nr.Dropout(0.9, 0.9, 0.9)),
    "rnn": ("rnn", [nr.RNN], {}, None),
    "rnn dropout 0.9": ("rnn", [nr.RNN], {}, nr.Dropout(0.9, 0.9, 0.9)),
}


def build(case, args, dtype):
    _, (cell,), options, dropout = CASES[case]
    options = {k: (args.hidden // 2 if v == "half" else v) for k, v in options.items()}
    return nr.SequenceModel(args.features, [cell(args.hidden, **options)], head=nr.heads.Classify(10),
                            dropout=dropout, dtype=dtype, seed=0)


def check(case, args, x, y):
    """float32 loss and gradients agree with the float64 model of the same parameters."""
    single, double = build(case, args, np.float32), build(case, args, np.float64)
    double.params[:] = single.params
    single.rng, double.rng = np.random.default_rng(1), np.random.default_rng(1)
    loss32 = single.loss_and_grad(x, y)
    loss64 = double.loss_and_grad(x.astype(np.float64), y)
    grad_error = np.abs(single.grads - double.grads).max() / np.abs(double.grads).max()
    if abs(loss32 - loss64) > 1e-4 * abs(loss64) or grad_error > 1e-3:
        raise SystemExit(f"{case}: float32 disagrees with float64 (loss {loss32} vs {loss64}, "
                         f"gradient error {grad_error:.2e})")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m perf.options", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--features", type=int, default=28)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.steps, args.features)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    models = {}
    for case in CASES:
        check(case, args, x[:8], y[:8])
        models[case] = build(case, args, np.float32)
        models[case].loss_and_grad(x, y)            # compile and allocate workspaces

    times = {case: [] for case in CASES}
    for _ in range(args.repeat):
        for case, model in models.items():
            start = time.perf_counter()
            model.loss_and_grad(x, y)
            times[case].append(time.perf_counter() - start)

    print(f"training step (forward + loss + backward), float32, B={args.batch} T={args.steps} "
          f"F={args.features} H={args.hidden}, {args.repeat} rounds")
    print(f"{'case':30s} {'median ms':>10s} {'min':>8s} {'max':>8s} {'vs plain':>9s}")
    plain = {}
    for case, (family, *_ ) in CASES.items():
        ms = np.array(times[case]) * 1e3
        median = float(np.median(ms))
        plain.setdefault(family, median)
        print(f"{case:30s} {median:10.2f} {ms.min():8.2f} {ms.max():8.2f} {median / plain[family]:8.2f}x")


if __name__ == "__main__":
    main()
