#!/usr/bin/env bash
# A fleet to try: N replicas (default 3) of the release build on one PostgreSQL database and one Redis, on
# ports 8001, 8002, ... Ctrl-C stops them all.
#
#   scripts/fleet.sh 3                      # or: make fleet N=3
#   DATABASE_URL=postgres://me@db/mercator REDIS_URL=redis://cache:6379/0 scripts/fleet.sh 2
#
# Without DATABASE_URL it makes (and keeps) the database `mercator_fleet` on 127.0.0.1:5432. The replicas
# share the keys that must be shared: the admin key, the secret key that seals webhook secrets and the
# token signing keys, made once into .fleet/ (or taken from the environment). Put any load balancer in
# front of the ports; each replica answers every request alike.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
n="${1:-${N:-3}}"
base_port="${BASE_PORT:-8001}"
state="$root/.fleet"
mkdir -p "$state"
target="${CARGO_TARGET_DIR:-$root/target}"

scripts/install-runtime.sh
# MERCATOR_BIN: a binary built elsewhere; else this checkout's release build.
mercator="${MERCATOR_BIN:-$target/release/mercator}"
[ -n "${MERCATOR_BIN:-}" ] || cargo build --quiet --release --bin mercator

if [ -z "${DATABASE_URL:-}" ]; then
  psql -q -h 127.0.0.1 -U postgres -d test -tc "SELECT 1 FROM pg_database WHERE datname = 'mercator_fleet'" \
    | grep -q 1 || psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE mercator_fleet"
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/mercator_fleet"
fi
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
secret() { [ -f "$state/$1" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$state/$1"; cat "$state/$1"; }
export MERCATOR_SECRET_KEY="${MERCATOR_SECRET_KEY:-$(secret secret.key)}"
export MERCATOR_JWT_SIGNING_KEYS="${MERCATOR_JWT_SIGNING_KEYS:-$(secret jwt-signing.keys)}"
if [ -z "${MERCATOR_ADMIN_KEY:-}" ]; then
  [ -f "$state/admin.key" ] || echo "mk_fleet_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$state/admin.key"
  MERCATOR_ADMIN_KEY="$(cat "$state/admin.key")"
fi
export MERCATOR_ADMIN_KEY

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT INT TERM
for i in $(seq 1 "$n"); do
  port=$((base_port + i - 1))
  mkdir -p "$state/replica-$i"
  "$mercator" serve --addr "127.0.0.1:$port" --data-dir "$state/replica-$i" --models-dir models "${@:2}" &
  pids+=($!)
  # The first migrates the database and registers the admin key before the others start.
  if [ "$i" = 1 ]; then
    for _ in $(seq 1 300); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || true)" = 200 ] && break
      sleep 0.2
    done
  fi
done
echo "$n replicas on ports $base_port..$((base_port + n - 1)), one database ($DATABASE_URL), one Redis."
echo "Admin key: $MERCATOR_ADMIN_KEY"
echo "Try:  curl -s localhost:$base_port/readyz; curl -s -H \"authorization: Bearer \$KEY\" localhost:$((base_port + 1))/api/v1/models"
wait
