#!/usr/bin/env bash
# Conformance: schemathesis (every check) against a running server, with the platform owner's key, for
# $DURATION seconds (default 300). The OpenAPI document the server publishes is the contract; where an
# operation refuses schema-valid data for a rule a schema cannot say, schemathesis.toml names the rule.
# Left out: the WebSocket routes (schemathesis' HTTP client cannot hold an upgraded connection; the suite
# drives them with a real WebSocket client) and deleting API keys (the run would delete its own key).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
DURATION="${DURATION:-300}"
target="${CARGO_TARGET_DIR:-$root/target}"
venv="$root/.venv-conformance"

scripts/install-runtime.sh
cargo build --quiet --bin mercator
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet schemathesis==4.32.5
fi

key="mk_conformance_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
data="$(mktemp -d)"
port="${PORT:-8199}"
RUST_LOG=warn MERCATOR_ADMIN_KEY="$key" "$target/debug/mercator" serve --addr "127.0.0.1:$port" \
  --data-dir "$data" --models-dir models &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 1 300); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || true)" = 200 ] && break
  sleep 0.2
done

"$venv/bin/schemathesis" --config-file schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
  --checks all -H "Authorization: Bearer $key" --max-time "$DURATION" \
  --exclude-path-regex '^/ws/' --exclude-name 'DELETE /api/v1/api-keys/{id}'
