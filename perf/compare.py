"""``python -m perf compare BASE.json NEW.json``: the regression gate.

What is compared. Per case and thread count present in both files, the figure of
merit is the ratio to PyTorch, torch median / numrnn median: against PyTorch at
its best when both runs have it, else against PyTorch's default. A ratio cancels
most of what moves between runs on a shared machine (load, clock, the process's
luck), since both sides were timed alternately in the same rounds. Cases without
PyTorch (time to first step) use 1 / numrnn median; peak memory uses
torch / numrnn peak RSS (or 1 / numrnn's RSS without torch).

The noise threshold. From each side's samples, the relative spread of its median
is estimated as

    s = 0.93 * (p75 - p25) / median / sqrt(n)

(IQR / 1.349 is a robust standard deviation; the median's standard error is
1.2533 * sd / sqrt(n); 1.2533 / 1.349 = 0.93). The ratio's relative uncertainty in
one run is sqrt(s_numrnn^2 + s_torch^2), and the change between two runs has

    u = sqrt(u_base^2 + u_new^2).

A case regressed when new / base - 1 < -max(FLOOR, Z * u), with Z = 3 and FLOOR =
0.05 (5%) by default (``--z``, ``--floor``): the floor covers what the spread of
one run cannot see (e.g. a different background load between the runs); a
single-sample figure (peak memory) only gets the floor. Improvements are
reported, never fail. Exit status 1 when any case regressed, else 0; cases present
in only one file are listed but do not fail.
"""
import json
import math
import sys

Z = 3.0
FLOOR = 0.05


def median_spread(side):
    """Relative standard error of a side's median (0 for a single sample)."""
    n = side.get("n", len(side.get("samples", [])))
    if n < 2 or not side.get("median"):
        return 0.0
    return 0.93 * (side["p75"] - side["p25"]) / side["median"] / math.sqrt(n)


def merits(result):
    """{(name, threads): (value, relative uncertainty, what)} for every comparable figure."""
    out = {}
    for rec in result.get("cases", []):
        key = (rec["name"], rec["threads"])
        for variant in ("best", "default"):
            if f"ratio_{variant}" in rec:
                u = math.hypot(median_spread(rec["numrnn"]), median_spread(rec[f"torch_{variant}"]))
                out[key] = (rec[f"ratio_{variant}"], u, f"torch {variant} / numrnn")
                break
        else:
            out[key] = (1.0 / rec["numrnn"]["median"], median_spread(rec["numrnn"]), "1 / numrnn time")
    for rec in result.get("startup", []):
        for k in ("cold", "warm"):
            if rec.get(k):
                out[(f"first step, {k} cache", rec["threads"])] = (1.0 / rec[k]["median"], median_spread(rec[k]),
                                                                   "1 / seconds")
    for rec in result.get("memory", []):
        ours = rec["numrnn"]["maxrss_mib"]
        if rec.get("torch"):
            out[("peak memory pixel lstm", None)] = (rec["torch"]["maxrss_mib"] / ours, 0.0, "torch / numrnn RSS")
        else:
            out[("peak memory pixel lstm", None)] = (1.0 / ours, 0.0, "1 / numrnn RSS")
    return out


def compare(base, new, z=Z, floor=FLOOR):
    """Rows {name, threads, base, new, change, threshold, regressed, what} for the
    common figures, and the keys found in only one of the two."""
    b, n = merits(base), merits(new)
    rows = []
    for key in b:
        if key not in n:
            continue
        (vb, ub, what_b), (vn, un, what_n) = b[key], n[key]
        if what_b != what_n:      # e.g. one run without the best variant: not comparable
            continue
        threshold = max(floor, z * math.hypot(ub, un))
        change = vn / vb - 1.0
        rows.append({"name": key[0], "threads": key[1], "base": vb, "new": vn, "change": change,
                     "threshold": threshold, "regressed": change < -threshold, "what": what_b})
    only = sorted({k for k in b if k not in n} | {k for k in n if k not in b}, key=str)
    return rows, only


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main(base_path, new_path, z=Z, floor=FLOOR, out=print):
    base, new = load(base_path), load(new_path)
    rows, only = compare(base, new, z, floor)
    out(f"base {base_path} ({base.get('created')}, load {base.get('load_start')} -> {base.get('load_end')})")
    out(f"new  {new_path} ({new.get('created')}, load {new.get('load_start')} -> {new.get('load_end')})")
    out(f"{'case':36s} {'thr':>4s} {'base':>8s} {'new':>8s} {'change':>8s} {'noise':>7s}  verdict")
    for r in rows:
        verdict = "REGRESSED" if r["regressed"] else ("faster" if r["change"] > r["threshold"] else "ok")
        thr = "-" if r["threads"] is None else str(r["threads"])
        out(f"{r['name']:36s} {thr:>4s} {r['base']:8.3f} {r['new']:8.3f} {r['change']:+8.1%} "
            f"{r['threshold']:7.1%}  {verdict}  ({r['what']})")
    for key in only:
        out(f"only in one file: {key[0]} (threads {key[1]})")
    regressed = [r for r in rows if r["regressed"]]
    out(f"{len(regressed)} of {len(rows)} figures regressed")
    return 1 if regressed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
