#!/usr/bin/env bash
# Waits for a detached experiments/round3/run.sh, at most SECONDS, then copies what it has so far into $OUT.
# For a device machine whose calls are capped in length: the first call starts run.sh under setsid, and
# each call (this script) waits and brings back a snapshot; the next call follows within the warm window.
#
#   bash experiments/round3/poll.sh 540
set -u
ROOT=${SCIENCE_DIR:-/tmp/round3}
OUT=${OUT:?set OUT to the folder to copy into}
end=$((SECONDS + ${1:-540}))
until grep -q "run.sh exited" "$ROOT/progress.log" 2>/dev/null || [ $SECONDS -ge $end ]; do sleep 5; done
cd "$ROOT" && tar czf "$OUT/round3.tgz" --ignore-failed-read progress.log logs gate report data/metadata.json \
  $(ls -d runs/*/metrics.jsonl runs/*/config.json runs/*/eval.json eval/*/*.json eval/*/*.md eval/*/*.png 2>/dev/null)
cp progress.log "$OUT/progress.log"
cat progress.log
