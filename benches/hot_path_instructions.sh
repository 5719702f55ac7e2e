#!/usr/bin/env bash
# Instructions per event of the hot path, counted by callgrind (deterministic, unlike
# time on a shared machine). Runs examples/hot_path_instructions.rs (the REES46 sample,
# an aggregator warmed with it, then P passes of decode + validate + aggregate) for two
# pass counts and divides the difference in instructions by the difference in events,
# so the setup (loading the sample, warming the state) cancels out.
#
#   benches/hot_path_instructions.sh [mode ...]    # modes: borrowed (default), owned, decode
#   P1=1 P2=3 benches/hot_path_instructions.sh borrowed owned
#
# Needs valgrind. Builds the example in the release profile into $CARGO_TARGET_DIR
# (default target/). The callgrind outputs stay in $OUT (default target/callgrind/) for
# callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
P1=${P1:-1}
P2=${P2:-3}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/callgrind}
mkdir -p "$OUT"
cargo build --release --example hot_path_instructions >&2
BIN="$TARGET/release/examples/hot_path_instructions"
# Copied so that another build into a shared target directory cannot swap it mid-run.
cp "$BIN" "$OUT/hot_path_instructions"
BIN="$OUT/hot_path_instructions"
[ $# -gt 0 ] || set -- borrowed

count() { # mode passes -> total instructions (Ir) of the run
    local f="$OUT/callgrind.$1.$2.out"
    valgrind --tool=callgrind --callgrind-out-file="$f" "$BIN" "$1" "$2" >/dev/null 2>&1
    # The "summary:" line of the output holds the total instruction count.
    awk '/^summary:/ {print $2}' "$f"
}

events=$("$BIN" decode 0 | awk '{print $1}')
for mode in "$@"; do
    i1=$(count "$mode" "$P1")
    i2=$(count "$mode" "$P2")
    echo "$mode: $(( (i2 - i1) / ((P2 - P1) * events) )) instructions per event" \
         "($events events, passes $P1 and $P2: $i1 and $i2 instructions)"
done
