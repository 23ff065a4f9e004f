#!/usr/bin/env bash
# Waits for a detached experiments/round4/run.sh, at most SECONDS, then packs what it has into $OUT.
# For a device machine whose calls are capped in length: the first call starts run.sh under setsid, and each
# call (this script) waits and brings back a snapshot ($OUT/round4.tgz, $OUT/progress.log); the next call
# follows within the machine's warm window, and the run goes on between calls.
#
#   bash experiments/round4/poll.sh 560
set -u
ROOT=${SCIENCE_DIR:-/tmp/round4}
OUT=${OUT:?set OUT to the folder to copy into}
end=$((SECONDS + ${1:-560}))
until grep -q "run.sh exited" "$ROOT/progress.log" 2>/dev/null || [ $SECONDS -ge $end ]; do sleep 5; done
cd "$ROOT" && tar czf "$OUT/round4.tgz" --ignore-failed-read progress.log logs data/metadata.json \
  stage/stage_report.json report $(ls -d b*/logs b*/ratio b*/runs/*/metrics.jsonl b*/runs/*/config.json \
  b*/runs/*/eval.json b*/eval/*/*.json b*/eval/*/*.md 2>/dev/null)
cp progress.log "$OUT/progress.log"
tail -n 40 progress.log
