#!/usr/bin/env bash
# Builds compared in one session: benches/load.sh and benches/predictions.sh alternated between mercator
# binaries, ROUNDS rounds of each in turn. BINS names them, "name=path name=path ..." (oldest first);
# without it, OLD_BIN (the build of an earlier commit) and NEW_BIN (default this checkout's release build)
# are "old" and "new". The echo (and naive) baselines run in every run, so each figure is compared as a
# ratio within its own run. Prints the medians (benches/ab.py).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
if [ -z "${BINS:-}" ]; then
  : "${OLD_BIN:?the older mercator binary to compare against (or BINS)}"
  BINS="old=$OLD_BIN new=${NEW_BIN:-$target/release/mercator}"
fi
ROUNDS="${ROUNDS:-2}"
BENCHES="${BENCHES:-load predictions}"
export DURATION="${DURATION:-10}" PERF_ANALYZER=0
names=()
for round in $(seq 1 "$ROUNDS"); do
  for entry in $BINS; do
    name="${entry%%=*}" bin="${entry#*=}"
    [ "$round" = 1 ] && names+=("$name")
    echo "round $round: $name"
    for bench in $BENCHES; do
      concurrency="${CONCURRENCY:-1 64 256}"
      [ "$bench" = predictions ] && concurrency="1 64"
      MERCATOR_BIN="$bin" RESULTS_NAME="$bench-$name-$round" CONCURRENCY="$concurrency" \
        "benches/$bench.sh" > /dev/null
    done
  done
done
python3 benches/ab.py benches/out "$ROUNDS" "$BENCHES" "${names[@]}"
