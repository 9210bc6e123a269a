#!/usr/bin/env bash
# NVIDIA's perf_analyzer (from PyPI's tritonclient 2.49.0 wheel; no GPU used) against a running Mercator,
# single-row price inference with binary tensors, at concurrency 1 and 64.
# Usage: API_KEY=<key> perf_analyzer.sh HOST:PORT
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
url="${1:-127.0.0.1:8000}"
venv="$root/.venv-bench"
if [ ! -x "$venv/bin/perf_analyzer" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "tritonclient[all]==2.49.0" "nvidia-cuda-runtime-cu12==12.*"
fi
if ! ldconfig -p | grep -q libb64.so.0d; then
  apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null
fi
cudart="$("$venv/bin/python" -c 'import nvidia.cuda_runtime, os; print(os.path.join(list(nvidia.cuda_runtime.__path__)[0], "lib"))')"
for c in 1 64; do
  echo "## perf_analyzer concurrency $c"
  LD_LIBRARY_PATH="$cudart:${LD_LIBRARY_PATH:-}" "$venv/bin/perf_analyzer" -m price -x 1 -u "$url" -i http \
    -H "Authorization: Bearer ${API_KEY:?the API key to send}" \
    --concurrency-range "$c" -b 1 --measurement-interval 5000 --stability-percentage 30 --max-trials 20 2>&1 | grep -E "Throughput|p50|p99|Avg request|Failed|rror" || true
done
