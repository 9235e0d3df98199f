#!/usr/bin/env bash
# Stops what start.sh started: nodes with SIGTERM (they drain and release their partitions),
# then Redis (or the masters of a Redis Cluster). Pass -9 to kill without draining.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${CLUSTER_DIR:-$here/run}
sig=${1:--TERM}
for pidfile in "$dir"/node-*.pid "$dir"/redis*.pid; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill "$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$pidfile"
done
