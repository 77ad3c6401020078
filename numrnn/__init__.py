"""numrnn: recurrent neural networks on the CPU, Numba kernels, hand-derived BPTT."""
import os

# Numba's OpenMP workers busy-wait after each parallel region and starve any
# other thread pool on the machine (NumPy's BLAS, a second process); passive
# waiting avoids a 10-50x slowdown under contention. A worker that sleeps at once,
# though, takes 15 us to wake for the next region, so GNU OpenMP's workers first
# spin for 1,000 pauses (tens of microseconds; a region that follows at once then
# starts in 2 us), too short to starve anyone. Both must be set before the first parallel
# kernel starts the thread pool; a user's own setting of either is kept.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["GOMP_SPINCOUNT"] = "1000"

from .memory import keep_freed_memory  # noqa: E402

keep_freed_memory()

from . import ctc, heads, infer, interop  # noqa: E402
from .cells import GRU, LSTM, RNN, Dropout  # noqa: E402
from .model import SequenceModel  # noqa: E402
from .optim import SGD, Adam  # noqa: E402
from .io import load, save  # noqa: E402
from .threads import get_num_threads, set_num_threads  # noqa: E402
from .train import Split, TrainConfig, TrainingInterrupted, evaluate, train  # noqa: E402

__version__ = "0.1.0"

__all__ = ["RNN", "LSTM", "GRU", "Dropout", "SequenceModel", "heads", "ctc", "infer", "interop", "Adam", "SGD",
           "save", "load", "train", "evaluate", "Split", "TrainConfig", "TrainingInterrupted", "set_num_threads",
           "get_num_threads", "__version__"]
