#!/usr/bin/env bash
# Starts Redis (AOF on) and N Switchyard nodes on 127.0.0.1 as real processes, each with its own
# config, log and pid file under $CLUSTER_DIR (default cluster/run). Stop them with stop.sh.
#   cluster/start.sh [N]        env: CLUSTER_DIR, BASE_PORT (8081), REDIS_PORT (6380), ADMIN_TOKEN
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
n=${1:-3}
dir=${CLUSTER_DIR:-$here/run}
base=${BASE_PORT:-8081}
redis_port=${REDIS_PORT:-6380}
token=${ADMIN_TOKEN:-local-cluster-admin-token}
bin=${SWITCHYARD_BIN:-$here/../target/release/switchyard}
mkdir -p "$dir"
[ -x "$bin" ] || (cd "$here/.." && cargo build --release)

if [ ! -f "$dir/redis.pid" ] || ! kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; then
  redis-server "$here/redis.conf" --port "$redis_port" --dir "$dir" >"$dir/redis.log" 2>&1 &
  echo $! >"$dir/redis.pid"
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

for i in $(seq 1 "$n"); do
  port=$((base + i - 1))
  conf="$dir/node-$i.toml"
  { cat "$here/node.toml"; printf 'listen = "127.0.0.1:%s"\nnode_id = "node-%s"\nredis_url = "redis://127.0.0.1:%s/"\n' "$port" "$i" "$redis_port"; } >"$conf"
  if [ -f "$dir/node-$i.pid" ] && kill -0 "$(cat "$dir/node-$i.pid")" 2>/dev/null; then continue; fi
  SWITCHYARD_ADMIN_TOKEN=$token "$bin" serve --config "$conf" >"$dir/node-$i.log" 2>&1 &
  echo $! >"$dir/node-$i.pid"
done
for i in $(seq 1 "$n"); do
  port=$((base + i - 1))
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  echo "node-$i: http://127.0.0.1:$port (pid $(cat "$dir/node-$i.pid"), log $dir/node-$i.log)"
done
echo "redis: 127.0.0.1:$redis_port (pid $(cat "$dir/redis.pid")); admin token: $token"
