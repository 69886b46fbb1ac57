#!/usr/bin/env bash
# Runs this tree's load harness and another tree's alternately, REPS times, on the figures a
# change must not regress: WebSocket flat out at 1,000 subscribers, WebSocket 5,000 x 10/s, SSE
# flat out at 1,000. Each line of OUT is one run. Loopback only.
#
#   git worktree add /tmp/prev <commit>
#   (cd /tmp/prev && CARGO_TARGET_DIR=/tmp/prev-target cargo build --release --example load)
#   cargo build --release --example load
#   benches/compare-trees.sh /tmp/prev-target/release/examples/load [REPS] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."

prev="$1"
reps="${2:-3}"
out="${3:-compare-trees.txt}"
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
now="$target_dir/release/examples/load"
: > "$out"

# bin label kind clients messages [rate]
run() {
  local args=(run --kind "$3" --clients "$4" --messages "$5")
  if [ -n "${6:-}" ]; then args+=(--rate "$6"); fi
  local o
  o="$("$1" "${args[@]}" 2>&1)"
  pick() { grep -oP "$1" <<< "$o" || echo "?"; }
  echo "$2 $3 c=$4 m=$5 r=${6:-flat} rate=$(pick '= \K[0-9.]+(?= msgs/s)') p50=$(pick 'p50 \K[0-9.]+') p99=$(pick 'p99 \K[0-9.]+') cpu=$(pick '= \K[0-9.]+(?= µs per delivery)') mem=$(pick '= \K[0-9.]+(?= KiB per connection)') conn=$(pick '= \K[0-9.]+(?= conn/s)') lost=$(pick 'lost \K[0-9]+') load=$(pick 'load average \K[0-9.]+')" | tee -a "$out"
}

for _ in $(seq 1 "$reps"); do
  for side in prev now; do
    bin="$prev"
    if [ "$side" = now ]; then bin="$now"; fi
    run "$bin" "$side" ours-ws 1000 1000
    run "$bin" "$side" ours-ws 5000 150 10
    run "$bin" "$side" ours-sse 1000 1000
  done
done
