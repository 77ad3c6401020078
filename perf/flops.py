"""Analytic FLOP counts of a training step, and the GEMMs that make it up.

Only matrix products are counted (2*m*k*n FLOPs for an (m, k) @ (k, n) product);
the elementwise gate math, the loss and Adam are O(T*B*G) and O(N) and left out,
so the figure is the work that any engine built on GEMMs must do. For one
recurrent layer with input size F, hidden size H, G = g*H gate columns (g = 4
LSTM, 3 GRU, 1 RNN), T steps and batch B:

    forward    input projection   (T*B, F) @ (F, G)      once      2*T*B*F*G
               recurrence         (B, H)   @ (H, G)      T times   2*T*B*H*G
    backward   dh through U       (B, G)   @ (G, H)      T times   2*T*B*G*H
               dU                 (H, T*B) @ (T*B, G)    once      2*T*B*H*G
               dW                 (F, T*B) @ (T*B, G)    once      2*T*B*F*G
               dX (layers > 0)    (T*B, G) @ (G, F)      once      2*T*B*G*F

so forward = 2*T*B*G*(F + H) and backward = 2*T*B*G*(F + 2H) (+ 2*T*B*G*F when the
layer's input needs a gradient, i.e. every layer but the first). A linear head of
n outputs on the last step adds 2*B*H*n forward and 4*B*H*n backward.

Example: row-MNIST LSTM-128 (T=28, B=128, F=28, H=128, G=512): forward 0.5725
GFLOP, step 1.6158 GFLOP with a 10-way head. (PERF_NOTES.md's "about 1.72 GFLOP",
three times the forward, also counts dX of the first layer, which no engine needs.)
GRU reset_after=True has the same GEMMs with G = 3H (r * (h U_c + b_hc) is
elementwise).
"""

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def layer_gemms(cell, T, B, F, H, need_dx):
    """[(m, k, n, count)] of one layer's forward and backward GEMMs."""
    G = GATES[cell] * H
    gemms = [(T * B, F, G, 1), (B, H, G, T),           # forward
             (B, G, H, T), (H, T * B, G, 1), (F, T * B, G, 1)]   # backward
    if need_dx:
        gemms.append((T * B, G, F, 1))
    return gemms


def head_gemms(B, H, n):
    """Linear head on the last step: forward, dW and dh."""
    return [(B, H, n, 1), (H, B, n, 1), (B, n, H, 1)]


def step_gemms(cell, T, B, F, H, layers=1, out=10):
    """Every GEMM of a training step of ``layers`` stacked layers of size H and a head."""
    gemms = []
    for k in range(layers):
        gemms += layer_gemms(cell, T, B, F if k == 0 else H, H, need_dx=k > 0)
    return gemms + head_gemms(B, H, out)


def gemm_flops(gemms):
    return sum(2 * m * k * n * count for m, k, n, count in gemms)


def forward_flops(cell, T, B, F, H, layers=1):
    """Recurrent layers' forward only: sum over layers of 2*T*B*G*(F_in + H)."""
    G = GATES[cell] * H
    return sum(2 * T * B * G * ((F if k == 0 else H) + H) for k in range(layers))


def step_flops(cell, T, B, F, H, layers=1, out=10):
    """Training step: forward and backward of every layer and of the head."""
    return gemm_flops(step_gemms(cell, T, B, F, H, layers, out))
