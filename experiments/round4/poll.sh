#!/usr/bin/env bash
# Waits for a detached experiments/round4/run.sh, at most SECONDS, then packs what it has into $OUT.
# For a device machine whose calls are capped in length: the first call starts run.sh under setsid, its pid in
# $ROOT/launcher.pid, and each call (this script) waits and brings back a snapshot ($OUT/round4.tgz,
# $OUT/progress.log); the next call follows within the machine's warm window, and the run goes on between calls.
#
#   mkdir -p /tmp/round4; rm -rf /tmp/r4code; cp -r . /tmp/r4code    # a copy the next calls' tree cannot replace
#   (cd /tmp/r4code && ROUND4_BUDGET=14 setsid -w bash experiments/round4/run.sh > /tmp/round4/run.log 2>&1 &
#    echo $! > /tmp/round4/launcher.pid); bash experiments/round4/poll.sh 540     # the first call
#   bash experiments/round4/poll.sh 560                                            # the next ones
#
# It waits while the launcher's pid lives (several run.sh in a row under one setsid bash -c '...' included) and
# while progress.log's last line is not run.sh's "run.sh exited". In a shell with job control (the device's) a
# background setsid forks, and without -w its parent, $!, is gone at once; the second test covers that.
set -u
ROOT=${SCIENCE_DIR:-/tmp/round4}
OUT=${OUT:?set OUT to the folder to copy into}
end=$((SECONDS + ${1:-560}))
if [ ! -f "$ROOT/launcher.pid" ] && [ ! -f "$ROOT/progress.log" ]; then
  echo "poll.sh: no run here ($ROOT has no launcher.pid and no progress.log): this machine is not the one the" \
    "first call started it on (it goes back when idle between calls). Start the run again with the first call." >&2
  exit 3
fi
running() {
  { [ -f "$ROOT/launcher.pid" ] && kill -0 "$(cat "$ROOT/launcher.pid")" 2>/dev/null; } ||
    ! tail -n 1 "$ROOT/progress.log" 2>/dev/null | grep -q "run.sh exited"
}
while running && [ $SECONDS -lt $end ]; do sleep 5; done
cd "$ROOT" && tar czf "$OUT/round4.tgz" --ignore-failed-read progress.log logs \
  $(ls -d data/metadata.json stage/stage_report.json report b*/logs b*/ratio b*/runs/*/metrics.jsonl b*/runs/*/config.json \
  b*/runs/*/eval.json b*/eval/*/*.json b*/eval/*/*.md 2>/dev/null)
cp progress.log "$OUT/progress.log"
tail -n 40 progress.log
