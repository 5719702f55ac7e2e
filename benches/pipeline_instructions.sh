#!/usr/bin/env bash
# Instructions per event of the whole embedded pipeline (decode → validate → aggregate →
# feature flush → archive (Parquet) → checkpoint), counted by valgrind's callgrind, which
# does not move with the machine's noise.
#
#   benches/pipeline_instructions.sh            # the bundled REES46 sample, 5,000 vs all rows
#   DATASET=yoochoose DATA=../shared/data/yoochoose_rsc15/yoochoose-clicks-100k_train_full.txt \
#     SMALL=20000 LARGE=70000 benches/pipeline_instructions.sh
#
# `recstream replay` runs twice under callgrind, on the first SMALL and LARGE rows of the
# same log; the difference in instructions divided by the difference in events is the
# marginal cost per event (start-up, opening the stores and the final checkpoint cancel
# out). The same difference is split by stage with callgrind_annotate's inclusive costs.
# Reading the CSV (not pipeline work) is shown and subtracted.
#
# The flush and checkpoint cadences are time-based (processor.flush_interval_ms = 25,
# checkpoint_interval_ms = 10000). Under callgrind the replay runs at roughly 1,000
# events/s — one shard's share of 100k events/s over 100 shards — so the defaults give
# about the flushes and checkpoints per event a shard has in production; the script
# prints the rate and the checkpoints of each run so that the reader can check.
#
# Needs valgrind (apt-get install -y valgrind). Bounded: two runs of a few minutes each.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind missing: apt-get install -y valgrind" >&2; exit 1; }
DATASET="${DATASET:-rees46}"
DATA="${DATA:-data/sample/rees46-2019-10-01-head.csv.gz}"
SMALL="${SMALL:-5000}"
LARGE="${LARGE:-17434}"
TARGET="${CARGO_TARGET_DIR:-target}"

WORK="$(mktemp -d /tmp/recstream-instructions.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
# A private copy: another build may replace target/release/recstream meanwhile
# (RECSTREAM_BIN: an already built binary instead; nothing is built).
if [ -n "${RECSTREAM_BIN:-}" ]; then
  cp "$RECSTREAM_BIN" "$WORK/recstream"
else
  cargo build --release -q --bin recstream
  cp "$TARGET/release/recstream" "$WORK/recstream"
fi

for n in "$SMALL" "$LARGE"; do
  RECSTREAM__EMBEDDED__DATA_DIR="$WORK/data-$n" RECSTREAM_LOG=warn \
    valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$n" \
    "$WORK/recstream" replay "$DATASET" --path "$DATA" --limit "$n" --json \
    >"$WORK/out.$n" 2>"$WORK/err.$n" || { cat "$WORK/err.$n" >&2; exit 1; }
  callgrind_annotate --inclusive=yes --threshold=100 "$WORK/cg.$n" >"$WORK/ann.$n" 2>/dev/null
done

python3 - "$WORK" "$SMALL" "$LARGE" <<'PY'
import json, re, sys
work, small, large = sys.argv[1], sys.argv[2], sys.argv[3]

def load(n):
    out = json.loads(open(f"{work}/out.{n}").read().strip().splitlines()[-1])
    total = None
    incl = {}
    for line in open(f"{work}/ann.{n}"):
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(?:PROGRAM TOTALS|(\S.*))$", line)
        if not m:
            continue
        ir = int(m.group(1).replace(",", ""))
        if m.group(2) is None:
            total = ir
        else:
            name = m.group(2)
            incl[name] = max(incl.get(name, 0), ir)
    return out, total, incl

# Stage → a pattern of the function whose inclusive cost is the stage's.
STAGES = [
    ("replay driver: read the CSV, build the records (not pipeline work)", r"recstream::replay::\{\{closure\}\}"),
    ("decode + validate (borrowed)", r"recstream_ingest::decode::decode_ref_with_limit"),
    ("aggregate", r"recstream_features::aggregate::Aggregator::apply_ref\b"),
    ("owned event for the archive and the join", r"EventRef::to_event\b"),
    ("archive: buffer rows", r"ArchiveWriter::push\b"),
    ("feature flush (drain + redb write)", r"ShardProcessor::flush"),
    ("checkpoint (roll: Parquet + dead letters, delta, state rows)", r"ShardProcessor::checkpoint"),
    ("archive: Parquet encoding of the rolls (a blocking thread)", r"archive::writer::encode_roll"),
]

def stage_cost(incl, pat):
    best = 0
    for name, ir in incl.items():
        if re.search(pat, name):
            best = max(best, ir)
    return best

(o1, t1, i1), (o2, t2, i2) = load(small), load(large)
e1, e2 = o1["summary"]["records"], o2["summary"]["records"]
de = e2 - e1
print(f"events: {e1} and {e2} ({o1['dataset']}); checkpoints {o1['summary']['checkpoints']} and "
      f"{o2['summary']['checkpoints']}; under callgrind {o1['events_per_second']:.0f} and "
      f"{o2['events_per_second']:.0f} events/s")
print(f"program total: {t1:,} and {t2:,} instructions")
load_ir = stage_cost(i2, STAGES[0][1]) - stage_cost(i1, STAGES[0][1])
marginal = (t2 - t1) / de
print(f"marginal, whole process: {marginal:,.0f} instructions per event")
print(f"marginal, pipeline (CSV reading subtracted): {(t2 - t1 - load_ir) / de:,.0f} instructions per event")
print()
print("| stage | instructions per event (marginal) |")
print("|---|---:|")
named = 0
for label, pat in STAGES:
    d = stage_cost(i2, pat) - stage_cost(i1, pat)
    named += d
    print(f"| {label} | {d / de:,.0f} |")
# Work on other threads (the store's blocking writes, the runtime) and what inlining hid.
print(f"| everything else (blocking-thread store writes, runtime, replay driver) | {(t2 - t1 - named) / de:,.0f} |")
PY
