#!/usr/bin/env bash
# Executes every notebook headless (`jupyter nbconvert --to notebook --execute`), so they
# cannot rot. Executed copies go to $NOTEBOOK_OUT (a temporary directory by default); the
# notebooks in the repository stay without outputs.
#
#   RECSTREAM_BIN          the recstream binary            (default: target/debug/recstream)
#   RECSTREAM_ARCHIVE_DIR  an archive root (holds events/) (default: made here by `recstream replay rees46`)
#   RECSTREAM_DATA_DIR     the public datasets             (default: ../shared/data)
#   NOTEBOOK_VENV          virtualenv for requirements.txt (default: .venv, shared with scripts/test)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[notebooks]\033[0m %s\n' "$*" >&2; }

export RECSTREAM_BIN="${RECSTREAM_BIN:-$PWD/target/debug/recstream}"
export RECSTREAM_DATA_DIR="${RECSTREAM_DATA_DIR:-$PWD/../shared/data}"
[ -x "$RECSTREAM_BIN" ] || { log "error: $RECSTREAM_BIN is not built (cargo build --bin recstream)"; exit 1; }

VENV="${NOTEBOOK_VENV:-.venv}"
if [ ! -x "$VENV/bin/jupyter" ] || ! cmp -s notebooks/requirements.txt "$VENV/.requirements-notebooks.txt"; then
  log "installing notebooks/requirements.txt into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r notebooks/requirements.txt
  cp notebooks/requirements.txt "$VENV/.requirements-notebooks.txt"
fi

WORK="$(mktemp -d /tmp/recstream-notebooks.XXXXXX)"
if [ -z "${RECSTREAM_ARCHIVE_DIR:-}" ]; then
  log "building an archive: recstream replay rees46"
  printf '[embedded]\ndata_dir = "%s/data"\n' "$WORK" > "$WORK/config.toml"
  "$RECSTREAM_BIN" replay rees46 --path "$RECSTREAM_DATA_DIR/rees46_multicat" \
    --config "$WORK/config.toml" --json >/dev/null
  export RECSTREAM_ARCHIVE_DIR="$WORK/data/bucket"
fi
export RECSTREAM_MODELS_DIR="${RECSTREAM_MODELS_DIR:-$WORK/models}"
OUT="${NOTEBOOK_OUT:-$WORK/executed}"
mkdir -p "$OUT"

for nb in notebooks/*.ipynb; do
  log "executing $nb"
  "$VENV/bin/jupyter" nbconvert --to notebook --execute "$nb" --output-dir "$OUT" \
    --ExecutePreprocessor.timeout=600 --log-level=WARN
done
log "all notebooks ran; executed copies in $OUT"
