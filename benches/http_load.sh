#!/usr/bin/env bash
# HTTP load benchmark of GET /v1/recommendations on loopback, bounded in time.
#
#  1. starts `recstream demo` (release build) on a free loopback port;
#  2. saves one real recommendations response and serves it as a static file with nginx
#     on another loopback port, for every /v1/recommendations/<user> path (the ceiling:
#     the same payload with no work behind it);
#  3. max throughput: wrk, same settings, against both, in this one run -> ratio; every
#     request names the next of the sample's users (benches/rotate_users.lua), so no
#     per-user cache can flatter the figure; the one-user figure is printed beside it;
#  4. latency at a fixed rate: oha at 10,000 requests/s for 10 s, also rotating over the
#     users (--urls-from-file) -> p50/p99;
#  5. the catalog filter's cost: a second demo server with `scoring.catalog_filter = false`
#     (RECSTREAM__SCORING__CATALOG_FILTER=false), the same rotating wrk run against it
#     (FILTER_OFF=0 skips it).
#
# PERF_OUT=file: also records a `perf` profile (cpu-clock, 999 Hz, of the first server)
# during one more rotating wrk run; read it with `perf report -i file --no-children
# --stdio`. The binary is copied to the run's temp directory right after the build, so a
# concurrent build into the shared target directory cannot swap it mid-run.
#
# Needs wrk and nginx (apt-get install -y wrk nginx-light) and oha
# (cargo install oha --locked --root .bench-tools). Everything stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10}"
CONNS="${CONNS:-64}"
RATE="${RATE:-10000}"
OHA="$(command -v oha || echo .bench-tools/bin/oha)"
command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 1; }
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { echo "nginx missing: apt-get install -y nginx-light" >&2; exit 1; }
[ -x "$OHA" ] || { echo "oha missing: cargo install oha --locked --root .bench-tools" >&2; exit 1; }

# The release binary, as `recstream demo` ships, run from a private copy (RECSTREAM_BIN:
# an already built binary instead, e.g. to measure an older build; nothing is built).
WORK="$(mktemp -d /tmp/recstream-http-bench.XXXXXX)"
if [ -n "${RECSTREAM_BIN:-}" ]; then
  cp "$RECSTREAM_BIN" "$WORK/recstream"
else
  cargo build --release -q --bin recstream
  cp "${CARGO_TARGET_DIR:-target}/release/recstream" "$WORK/recstream"
  git rev-parse --short HEAD 2>/dev/null | sed 's/^/commit: /' || true
fi
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
APP_PORT="$(port)"; NGINX_PORT="$(port)"
cleanup() {
  [ -n "${APP_PID:-}" ] && kill "$APP_PID" 2>/dev/null && wait "$APP_PID" 2>/dev/null || true
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

FILTER_OFF="${FILTER_OFF:-1}"
# start_demo <port> <dir>: a demo server in the background (APP_PID), waits until it serves.
start_demo() {
  "$WORK/recstream" demo --listen "127.0.0.1:$1" --data-dir "$WORK/$2" \
    --exit-after $((DURATION * 6 + 120)) --log warn >"$WORK/$2.out" 2>&1 &
  APP_PID=$!
  for _ in $(seq 1200); do grep -q "serving on" "$WORK/$2.out" && break; sleep 0.1; done
  grep -q "serving on" "$WORK/$2.out" || { cat "$WORK/$2.out"; exit 1; }
}
start_demo "$APP_PORT" demo

# The busiest user of the sample (printed first by the demo) and the storefront's API key
# (the demo prints its credentials; recommendations need one).
USER_ID="$(grep -m1 -oP '^  user \K[^ ]+' "$WORK/demo.out")"
KEY="$(grep -m1 -oP '^  storefront key: \K\S+' "$WORK/demo.out")"
AUTH="x-api-key: $KEY"
URL_APP="http://127.0.0.1:$APP_PORT/v1/recommendations/$USER_ID?n=10"
# Every user of the bundled sample the demo replayed, in file order.
python3 - "$WORK/users.txt" <<'PY'
import csv, glob, gzip, sys
seen = {}
for path in sorted(glob.glob("data/sample/*.csv.gz")):
    with gzip.open(path, "rt", newline="") as f:
        for row in csv.DictReader(f):
            seen.setdefault(row["user_id"], None)
open(sys.argv[1], "w").write("\n".join(seen) + "\n")
PY
USERS=$(wc -l < "$WORK/users.txt")
mkdir -p "$WORK/www"
curl -sf -H "$AUTH" "$URL_APP" > "$WORK/www/recs.json"
BYTES=$(wc -c < "$WORK/www/recs.json")

cat > "$WORK/nginx.conf" <<CONF
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $WORK/www;
    default_type application/json;
    # Any user's path answers the saved payload: the same bytes, no work.
    location /v1/recommendations/ { try_files /recs.json =404; }
    location / { }
  }
}
CONF
/usr/sbin/nginx -c "$WORK/nginx.conf"
URL_NGINX="http://127.0.0.1:$NGINX_PORT/v1/recommendations/$USER_ID?n=10"
sleep 0.5

echo "payload: $BYTES bytes; $USERS users; wrk -t2 -c$CONNS -d${DURATION}s; oha -q $RATE -z ${DURATION}s"
# Both get the same header and the same paths, so the requests match byte for byte.
rps() { wrk -t2 -c"$CONNS" -d"${DURATION}s" -H "$AUTH" "$@" | awk '/Requests\/sec/ {print $2}'; }
export USERS_FILE="$WORK/users.txt"
R_NGINX="$(rps -s benches/rotate_users.lua "http://127.0.0.1:$NGINX_PORT")"
R_APP="$(rps -s benches/rotate_users.lua "http://127.0.0.1:$APP_PORT")"
echo "max throughput, rotating over $USERS users  nginx static: $R_NGINX req/s   recstream: $R_APP req/s   ratio: $(python3 -c "print(round($R_APP/$R_NGINX, 3))")"
R_ONE="$(rps "$URL_APP")"
echo "max throughput, one user ($USER_ID)  recstream: $R_ONE req/s   ratio to the rotating nginx run: $(python3 -c "print(round($R_ONE/$R_NGINX, 3))")"

sed "s|^|http://127.0.0.1:$APP_PORT/v1/recommendations/|; s|\$|?n=10|" "$WORK/users.txt" > "$WORK/urls.txt"
"$OHA" --no-tui --output-format json -q "$RATE" -z "${DURATION}s" -c "$CONNS" --latency-correction -H "$AUTH" --urls-from-file "$WORK/urls.txt" > "$WORK/oha.json"
python3 - "$WORK/oha.json" "$RATE" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s, p = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
print(f"fixed rate {sys.argv[2]}/s: achieved {s['requestsPerSec']:.0f} req/s, "
      f"p50 {p['p50']*1e3:.3f} ms, p99 {p['p99']*1e3:.3f} ms, p99.9 {p['p99.9']*1e3:.3f} ms, "
      f"success rate {s['successRate']:.4f}, status {codes}")
PY

if [ -n "${PERF_OUT:-}" ]; then
  perf record -e cpu-clock -F 999 -g -o "$PERF_OUT" -p "$APP_PID" -- sleep "$DURATION" 2>/dev/null &
  PERF_PID=$!
  R_PERF="$(rps -s benches/rotate_users.lua "http://127.0.0.1:$APP_PORT")"
  wait "$PERF_PID" || true
  echo "perf profile of the server during a rotating run ($R_PERF req/s under perf): $PERF_OUT"
fi

if [ "$FILTER_OFF" = 1 ]; then
  # The same server without the catalog filter (measurement only: the filter is on by
  # default and in production), against the same rotating load, after the first stops.
  kill "$APP_PID" 2>/dev/null || true
  wait "$APP_PID" 2>/dev/null || true
  OFF_PORT="$(port)"
  RECSTREAM__SCORING__CATALOG_FILTER=false start_demo "$OFF_PORT" demo-nofilter
  AUTH="x-api-key: $(grep -m1 -oP '^  storefront key: \K\S+' "$WORK/demo-nofilter.out")"
  R_OFF="$(rps -s benches/rotate_users.lua "http://127.0.0.1:$OFF_PORT")"
  echo "catalog filter off, rotating: $R_OFF req/s (on: $R_APP req/s; ratio to nginx off: $(python3 -c "print(round($R_OFF/$R_NGINX, 3))"))"
fi
