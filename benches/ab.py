"""Medians of benches/ab.sh's rounds: per benchmark and concurrency, each binary's req/s, its ratio to the
echo of the same run, its p50 and p99.

Usage: ab.py OUT_DIR ROUNDS "BENCHES" NAME..."""

import json
import statistics
import sys

out, rounds, benches, names = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4:]


def cells(name):
    rows = [json.loads(line) for line in open(f"{out}/{name}.jsonl") if line.strip()]
    by = {(r["server"], r["concurrency"]): r["result"] for r in rows}
    rate = lambda r: r["requests"] / (r["duration_us"] / 1e6)
    for c in sorted({r["concurrency"] for r in rows}):
        m, e = by[("mercator", c)], by[("echo", c)]
        yield c, (rate(m), rate(m) / rate(e), m["p50_us"], m["p99_us"], m["errors"])


for bench in benches:
    print(f"\n{bench}: median of {rounds} rounds (req/s, ratio to the echo in the same run, p50 µs, p99 µs)\n")
    runs = {n: [dict(cells(f"{bench}-{n}-{r}")) for r in range(1, rounds + 1)] for n in names}
    print("| concurrency | " + " | ".join(f"{n} req/s | {n} vs echo | {n} p50 | {n} p99" for n in names)
          + " | errors |")
    print("|---:|" + "---:|---:|---:|---:|" * len(names) + "---:|")
    for c in sorted(runs[names[0]][0]):
        row, errors = [], 0
        for n in names:
            med = [statistics.median(run[c][i] for run in runs[n]) for i in range(4)]
            errors += sum(run[c][4] for run in runs[n])
            row.append(f"{med[0]:,.0f} | {med[1]:.2f}x | {med[2]:.0f} | {med[3]:.0f}")
        print(f"| {c} | " + " | ".join(row) + f" | {errors:.0f} |")
    print(f"\nEach run's req/s ({bench}):\n")
    for c in sorted(runs[names[0]][0]):
        print(f"- c={c}: " + "; ".join(
            f"{n} " + ", ".join(f"{run[c][0]:,.0f}" for run in runs[n]) for n in names))
