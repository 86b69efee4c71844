#!/usr/bin/env bash
# The proof of issue 14: the suite passes again and again on a fresh clone while another run goes on beside it.
#
#   scripts/soak.sh [RUNS] [TARGET]        (or: make test-soak SOAK_RUNS=5 SOAK_TARGET=test)
#
# Each round clones the repository twice, afresh, into a temporary directory (the committed HEAD of this
# checkout's branch: uncommitted changes are not part of the proof), and runs `make TARGET` in both clones
# at the same time. Every run's exit code, duration and failed tests go to the log (one line each); every
# run's whole output is kept beside it. The script exits 0 only if every run of every round passed.
# It runs the suite 2 x RUNS times in full: several hours for `test` on 2 cores; mind who shares the machine.
set -u

RUNS=${1:-5}
TARGET=${2:-test}
ROOT=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
REF=$(git -C "$ROOT" rev-parse --abbrev-ref HEAD)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${SOAK_DIR:-$ROOT/.soak/$STAMP}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/progression-soak-XXXXXX")
LOG="$OUT/soak.log"
mkdir -p "$OUT"
trap 'rm -rf "$WORK"' EXIT

log() { printf '%s\n' "$*" | tee -a "$LOG"; }

log "soak $STAMP: $RUNS rounds of two side-by-side \`make $TARGET\` on fresh clones of $REF ($COMMIT); host $(hostname), $(nproc) cores"
log "round side result seconds failed"

# One run: clone afresh, `make TARGET`; writes "<rc> <seconds>" to its status file.
run_one() {
  local round=$1 side=$2 dir="$WORK/r$1-$2" output="$OUT/round$1-$2.out" began rc
  began=$(date +%s)
  if git clone --quiet --branch "$REF" "$ROOT" "$dir" >"$output" 2>&1; then
    make -C "$dir" "$TARGET" >>"$output" 2>&1
    rc=$?
  else
    rc=97  # the clone itself failed
  fi
  echo "$rc $(( $(date +%s) - began ))" >"$OUT/round$1-$2.status"
  rm -rf "$dir"
}

failures=0
for round in $(seq 1 "$RUNS"); do
  run_one "$round" a &
  first=$!
  run_one "$round" b &
  second=$!
  wait "$first" "$second"
  for side in a b; do
    read -r rc seconds <"$OUT/round$round-$side.status"
    failed=$(grep -E '^(FAILED|ERROR) ' "$OUT/round$round-$side.out" | cut -d' ' -f2 | tr '\n' ' ')
    result=$([ "$rc" -eq 0 ] && echo pass || echo "FAIL(rc=$rc)")
    [ "$rc" -eq 0 ] || failures=$((failures + 1))
    log "$round $side $result $seconds ${failed:--}"
  done
done

log "$((RUNS * 2 - failures)) of $((RUNS * 2)) runs passed; outputs in $OUT"
[ "$failures" -eq 0 ]
