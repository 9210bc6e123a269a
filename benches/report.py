"""Turns benches/out/load.jsonl (written by benches/load.sh) into the Markdown table of benches/RESULTS.md."""

import json
import pathlib
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = {(r["server"], r["concurrency"]): r for r in rows}
levels = sorted({r["concurrency"] for r in rows})

print("| concurrency | server | req/s | p50 µs | p99 µs | errors | RSS MiB | vs echo | vs naive | vs fastapi |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for c in levels:
    rate = {}
    for server in ["echo", "naive", "fastapi", "mercator"]:
        r = by.get((server, c))
        if not r:
            continue
        res = r["result"]
        rate[server] = res["requests"] / (res["duration_us"] / 1e6)
        vs_echo = f"{rate[server] / rate['echo']:.2f}x" if server != "echo" and "echo" in rate else ""
        vs_naive = f"{rate[server] / rate['naive']:.2f}x" if server == "mercator" and "naive" in rate else ""
        vs_fastapi = f"{rate[server] / rate['fastapi']:.1f}x" if server == "mercator" and "fastapi" in rate else ""
        print(f"| {c} | {server} | {rate[server]:,.0f} | {res['p50_us']} | {res['p99_us']} | {res['errors']} | "
              f"{r['rss_kib'] / 1024:.0f} | {vs_echo} | {vs_naive} | {vs_fastapi} |")

if len(sys.argv) > 2 and pathlib.Path(sys.argv[2]).exists():
    print()
    print("perf_analyzer (binary tensors, batch 1):")
    print()
    print("```")
    print(pathlib.Path(sys.argv[2]).read_text().strip())
    print("```")
