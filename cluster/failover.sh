#!/usr/bin/env bash
# The failover scenario: three nodes, then node-2 is killed with SIGKILL; prints how long the
# survivors take to own every partition (expect about lease_ms + heartbeat_ms), then stops all.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export CLUSTER_DIR=${CLUSTER_DIR:-$(mktemp -d)}
token=${ADMIN_TOKEN:-local-cluster-admin-token}
"$here/start.sh" 3
owners() { curl -sf "http://127.0.0.1:${BASE_PORT:-8081}/v1/cluster" -H "Authorization: Bearer $token" \
  | python3 -c 'import json,sys; c=json.load(sys.stdin); print(" ".join(str(p["owner"]) for p in c["partitions"]))'; }
balanced() { owners | tr ' ' '\n' | sort | uniq -c | awk '$2!="None"{n++; c[n]=$1} $2=="None"{bad=1} END{if(bad||n<3)exit 1; mn=c[1];mx=c[1]; for(i in c){if(c[i]<mn)mn=c[i]; if(c[i]>mx)mx=c[i]} exit (mx-mn>1)}'; }
for _ in $(seq 150); do balanced && break; sleep 0.2; done
echo "before: $(owners | tr ' ' '\n' | sort | uniq -c | tr '\n' ' ')"
kill -9 "$(cat "$CLUSTER_DIR/node-2.pid")"; rm -f "$CLUSTER_DIR/node-2.pid"
start=$(date +%s%N)
until o=$(owners) && ! grep -qE 'node-2|None' <<<"$o"; do sleep 0.1; done
echo "after:  $(owners | tr ' ' '\n' | sort | uniq -c | tr '\n' ' ')"
echo "takeover: $(( ($(date +%s%N) - start) / 1000000 )) ms"
"$here/stop.sh"
