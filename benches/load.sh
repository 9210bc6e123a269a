#!/usr/bin/env bash
# The load benchmark: single-row V2 inference on the price model over loopback with wrk, against
#   echo     - an axum handler that parses the same request and answers a constant (the HTTP ceiling),
#   naive    - an axum handler running the model inline through one ORT session behind a mutex,
#   fastapi  - FastAPI on uvicorn, two workers, one ORT session each (benches/fastapi_peer.py, in a venv
#              this script makes: .venv-fastapi), the Python service Mercator is meant to replace,
#   mercator - target/release/mercator with the shipped models,
# at each concurrency in $CONCURRENCY for $DURATION seconds, all in one run; then NVIDIA's perf_analyzer
# against Mercator with binary tensors. Writes benches/out/*.jsonl and prints the table for RESULTS.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
DURATION="${DURATION:-15}"
CONCURRENCY="${CONCURRENCY:-1 16 64 256}"
PERF_ANALYZER="${PERF_ANALYZER:-1}"
out="$root/benches/out"
mkdir -p "$out"
target="${CARGO_TARGET_DIR:-$root/target}"

if ! command -v wrk >/dev/null; then
  echo "installing wrk"; apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
scripts/install-runtime.sh
# MERCATOR_BIN: a mercator binary built elsewhere (an older commit, to compare before and after in one
# session); the baselines still come from this checkout.
mercator_bin="${MERCATOR_BIN:-$target/release/mercator}"
if [ -z "${MERCATOR_BIN:-}" ] || [ ! -x "$target/release/bench-echo" ]; then
  cargo build --release --quiet --bin mercator --bin bench-echo --bin bench-naive
fi

python3 - "$out/price-row.json" <<'PY'
import json, sys
g = json.load(open("fixtures/golden/price.json"))["inputs"][0]
json.dump({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 20], "data": g["data"][:20]}]}, open(sys.argv[1], "w"))
PY

venv="$root/.venv-fastapi"
if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$(cat benches/fastapi-requirements.txt)" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r benches/fastapi-requirements.txt
  cp benches/fastapi-requirements.txt "$venv/.requirements"
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
"$target/release/bench-echo" 127.0.0.1:8101 & pids+=($!); echo_pid=$!
"$target/release/bench-naive" 127.0.0.1:8102 & pids+=($!); naive_pid=$!
# Every request carries an API key (to all three servers, so the requests are the same bytes); Mercator
# verifies it from its in-memory key cache after the first request.
export API_KEY="mk_benchadmin_0123456789abcdef0123456789abcdef"
(cd benches && PEER_MODEL="$root/models/price/1/model.onnx" exec "$venv/bin/uvicorn" fastapi_peer:app \
  --host 127.0.0.1 --port 8104 --workers 2 --log-level warning --no-access-log) & pids+=($!); fastapi_pid=$!
rm -rf "$out/data"
RUST_LOG=warn MERCATOR_ADMIN_KEY="$API_KEY" "$mercator_bin" serve --addr 127.0.0.1:8103 \
  --data-dir "$out/data" & pids+=($!); mercator_pid=$!
for port in 8101 8102 8104 8103; do
  for _ in $(seq 1 200); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -XPOST -H 'content-type: application/json' -H "authorization: Bearer $API_KEY" \
      --data-binary @"$out/price-row.json" "http://127.0.0.1:$port/v2/models/price/versions/1/infer" || true)
    [ "$code" = 200 ] && break; sleep 0.1
  done
  [ "$code" = 200 ] || { echo "server on $port never answered"; exit 1; }
done

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# A server's RSS with its children's (uvicorn's workers are processes of their own).
rss_kib_all() {
  local total kids
  total=$(rss_kib "$1")
  for kid in $(cat /proc/"$1"/task/*/children 2>/dev/null); do total=$(( total + $(rss_kib_all "$kid") )); done
  echo "$total"
}
results="$out/${RESULTS_NAME:-load}.jsonl"
: > "$results"
for c in $CONCURRENCY; do
  threads=$(( c < 2 ? 1 : 2 ))
  for server in echo naive fastapi mercator; do
    case $server in echo) port=8101 pid=$echo_pid;; naive) port=8102 pid=$naive_pid;;
      fastapi) port=8104 pid=$fastapi_pid;; mercator) port=8103 pid=$mercator_pid;; esac
    line=$(BODY_FILE="$out/price-row.json" wrk -t"$threads" -c"$c" -d"${DURATION}s" --timeout 5s -s benches/post.lua \
      "http://127.0.0.1:$port/v2/models/price/versions/1/infer" | tail -n 1)
    echo "{\"server\":\"$server\",\"concurrency\":$c,\"rss_kib\":$(rss_kib_all "$pid"),\"result\":$line}" | tee -a "$results"
  done
done

if [ "$PERF_ANALYZER" = 1 ]; then
  benches/perf_analyzer.sh 127.0.0.1:8103 | tee "$out/perf_analyzer.txt"
fi
python3 benches/report.py "$results" "$out/perf_analyzer.txt"
