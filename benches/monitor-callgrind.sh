#!/usr/bin/env bash
# What model monitoring costs in instructions, which (unlike seconds) a busy machine does not move: the
# release server under callgrind, monitoring on and off (--monitor false), instrumentation switched on
# after a warm-up, then $REQUESTS single-row requests of each kind over $CONCURRENCY connections (V2 price/2 and the REST
# price prediction), then the counts dumped. Prints instructions per request and the on/off ratio
# (benches/RESULTS.md). Everything the process executes in the window counts: the request path, the
# monitor thread's drains and the prediction log's writer.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
REQUESTS="${REQUESTS:-2000}"
# Client connections sending at once: 1 is the worst case (every batch one row, paying its per-batch part
# alone); more let batches of several rows form, as under load.
CONCURRENCY="${CONCURRENCY:-1}"
out="$root/benches/out"
mkdir -p "$out"
target="${CARGO_TARGET_DIR:-$root/target}"
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
scripts/install-runtime.sh
mercator_bin="${MERCATOR_BIN:-$target/release/mercator}"
[ -n "${MERCATOR_BIN:-}" ] || cargo build --release --quiet --bin mercator
export API_KEY="mk_benchadmin_0123456789abcdef0123456789abcdef"
python3 - "$out/price-v2-row.json" <<'PY'
import json, sys
g = json.load(open("fixtures/golden/price-v2.json"))["inputs"][0]
json.dump({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 27], "data": g["data"][:27]}]},
          open(sys.argv[1], "w"))
PY
port=8141
for mode in on off; do
  for bench in v2 rest; do
    data="$out/callgrind-data-$mode-$bench"
    rm -rf "$data" "$out/callgrind.$mode.$bench".*
    monitor=$([ "$mode" = on ] && echo true || echo false)
    RUST_LOG=warn MERCATOR_ADMIN_KEY="$API_KEY" valgrind --tool=callgrind --instr-atstart=no \
      --callgrind-out-file="$out/callgrind.$mode.$bench.%p" \
      "$mercator_bin" serve --addr "127.0.0.1:$port" --data-dir "$data" --monitor "$monitor" \
      2>"$out/callgrind.$mode.$bench.log" & pid=$!
    for _ in $(seq 1 1200); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.25; done
    python3 benches/fixture.py "http://127.0.0.1:$port" "$out/callgrind-ids.json" "$out/callgrind-row.json" >/dev/null
    case $bench in
      v2) body="$out/price-v2-row.json" path="/v2/models/price/versions/2/infer";;
      rest) body="$out/callgrind-row.json" path="/api/v1/predictions/price";;
    esac
    python3 benches/sequential.py "http://127.0.0.1:$port$path" "$body" 200
    callgrind_control -i on "$pid" >/dev/null 2>&1 || true
    python3 benches/sequential.py "http://127.0.0.1:$port$path" "$body" "$REQUESTS" "$CONCURRENCY"
    sleep 1  # a flush of the monitor and the log's writer inside the window
    callgrind_control -d "$pid" >/dev/null 2>&1 || true
    sleep 2
    kill "$pid"; wait "$pid" 2>/dev/null || true
    # The dump taken after the requests: the file with the most instructions (the one valgrind writes at
    # exit holds only what ran after it).
    total=$(cat "$out/callgrind.$mode.$bench".* | awk '/^summary:/ {print $2}' | sort -n | tail -1)
    echo "{\"mode\":\"$mode\",\"bench\":\"$bench\",\"requests\":$REQUESTS,\"concurrency\":$CONCURRENCY,\"instructions\":$total}" | tee -a "$out/monitor-callgrind.jsonl"
  done
done
python3 - "$out/monitor-callgrind.jsonl" "$REQUESTS" "$CONCURRENCY" <<'PY'
import json, sys
runs = {}
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r["requests"] == int(sys.argv[2]) and r.get("concurrency", 1) == int(sys.argv[3]):
        runs[r["bench"], r["mode"]] = r["instructions"] / r["requests"]
for bench in ("v2", "rest"):
    on, off = runs[bench, "on"], runs[bench, "off"]
    print(f"{bench}, {sys.argv[3]} connection(s): {on:,.0f} instructions per request with monitoring, {off:,.0f} without: on/off = {on / off:.4f} (off/on = {off / on:.4f})")
PY
