#!/usr/bin/env bash
# Reproduces issue 12's measurements in one go: the load tables at the issue's sizes (every
# server interleaved, medians of --reps runs, ours/best-baseline ratios, CPU per delivery),
# the flat-out plot, allocations per delivery (benches/alloc.rs) and the hub's fan-out on 1 vs
# 2 workers (benches/hub.rs, fanout_mt). Loopback only.
#
#   benches/run-issue12.sh [OUT_DIR]      (default: bench-issue12-<date>)
#
# Environment: REPS (default 3), PLOT_SIZES=1 to also run the 100/1,000/5,000-subscriber
# flat-out table the plot's x axis needs (else the plot has the 1,000-subscriber points only).
# Writes OUT_DIR/results.jsonl (raw, one line per run), OUT_DIR/tables.md (with `uptime`
# before each part), OUT_DIR/throughput.svg, OUT_DIR/alloc.txt, OUT_DIR/fanout_mt.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-bench-issue12-$(date -u +%Y-%m-%d)}"
reps="${REPS:-3}"
mkdir -p "$out"

cargo build --release --example load
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
load="$target_dir/release/examples/load"

tables="$out/tables.md"
: > "$tables"
load_line() { printf '\n`uptime` before this table: %s\n\n' "$(uptime)" >> "$tables"; }

load_line
only="issue12"
if [ "${PLOT_SIZES:-0}" = 1 ]; then only="issue12,flat"; fi
"$load" suite --only "$only" --reps "$reps" --out "$out/results.jsonl" >> "$tables"

"$load" plot "$out/results.jsonl" > "$out/throughput.svg"

load_line
cargo bench --bench alloc 2>&1 | tee "$out/alloc.txt" | grep '^allocs/delivery' >> "$tables"

load_line
cargo bench --bench hub -- fanout_mt 2>&1 | tee "$out/fanout_mt.txt" | grep -E '^fanout_mt|time:' >> "$tables"

echo "done: $tables, $out/results.jsonl, $out/throughput.svg"
