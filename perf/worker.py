"""PyTorch at its best, in a process of its own, driven by the suite over a pipe.

``torch.set_flush_denormal(True)`` sets flush-to-zero / denormals-are-zero in the
calling thread only. Threads inherit the setting when they are created, so it is
set here right after ``import torch`` and before any operation starts torch's
OpenMP pool: every pool thread then flushes (``denormal_probe`` reports it). In
the suite's own process this cannot be done without also changing the state of
the threads that run numrnn and PyTorch-as-users-run-it, hence this process.

The environment is the user's, as captured before numrnn was imported (numrnn
sets ``OMP_WAIT_POLICY``), and numrnn is never imported here.

Protocol: length-prefixed pickles on stdin/stdout; each request gets one reply,
``("ok", value)`` or ``("error", traceback text)``.
"""
import pickle
import struct
import sys
import time
import traceback


def read(stream):
    head = stream.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(n))


def write(stream, obj):
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(blob)) + blob)
    stream.flush()


def main():
    import torch

    flush_supported = torch.set_flush_denormal(True)    # before the pool exists
    from perf import torch_side

    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr          # stray prints must not corrupt the protocol
    cases = {}
    while True:
        msg = read(inp)
        if msg is None or msg[0] == "quit":
            return
        try:
            op, *args = msg
            if op == "threads":
                torch.set_num_threads(args[0])
                value = torch.get_num_threads()
            elif op == "probe":
                value = {"flush_supported": flush_supported, "flushed_fraction": torch_side.denormal_probe()}
            elif op == "build":
                key, spec, weights, data = args
                cases[key] = torch_side.build(spec, weights, data, "best")
                value = cases[key].check()
            elif op == "time":       # mean seconds per call over `calls` calls
                key, calls = args
                step = cases[key].step
                start = time.perf_counter()
                for _ in range(calls):
                    step()
                value = (time.perf_counter() - start) / calls
            elif op == "drop":
                cases.pop(args[0], None)
                value = None
            else:
                raise ValueError(f"unknown request {op!r}")
            write(out, ("ok", value))
        except Exception:  # reported to the suite, which names the case
            write(out, ("error", traceback.format_exc()))


if __name__ == "__main__":
    main()
