#!/usr/bin/env bash
# Starts Redis (AOF on) and N Switchyard nodes on 127.0.0.1 as real processes, each with its own
# config, log and pid file under $CLUSTER_DIR (default cluster/run). Stop them with stop.sh.
#   cluster/start.sh [N]        env: CLUSTER_DIR, BASE_PORT (8081), REDIS_PORT (6380), ADMIN_TOKEN
# With REDIS_CLUSTER=M (M >= 3) the store is a Redis Cluster of M masters on REDIS_PORT.. instead
# of one Redis, made with `redis-cli --cluster create`; the nodes get every master as a seed.
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

masters=${REDIS_CLUSTER:-0}
if [ "$masters" -eq 0 ]; then
  if [ ! -f "$dir/redis.pid" ] || ! kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; then
    redis-server "$here/redis.conf" --port "$redis_port" --dir "$dir" >"$dir/redis.log" 2>&1 &
    echo $! >"$dir/redis.pid"
    for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  redis_url="redis://127.0.0.1:$redis_port/"
else
  [ "$masters" -ge 3 ] || { echo "REDIS_CLUSTER must be at least 3 (masters)" >&2; exit 2; }
  seeds=() addrs=()
  for m in $(seq 0 $((masters - 1))); do
    p=$((redis_port + m))
    mkdir -p "$dir/redis-$p"
    if [ ! -f "$dir/redis-$p.pid" ] || ! kill -0 "$(cat "$dir/redis-$p.pid")" 2>/dev/null; then
      redis-server "$here/redis.conf" --port "$p" --dir "$dir/redis-$p" --cluster-enabled yes \
        --cluster-config-file nodes.conf >"$dir/redis-$p.log" 2>&1 &
      echo $! >"$dir/redis-$p.pid"
    fi
    for _ in $(seq 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
    seeds+=("redis://127.0.0.1:$p/") addrs+=("127.0.0.1:$p")
  done
  if ! redis-cli -p "$redis_port" cluster info | grep -q 'cluster_state:ok'; then
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$dir/redis-create.log"
    for _ in $(seq 100); do
      redis-cli -p "$redis_port" cluster info | grep -q 'cluster_state:ok' && break; sleep 0.1
    done
  fi
  redis_url=$(IFS=,; echo "${seeds[*]}")
fi

for i in $(seq 1 "$n"); do
  port=$((base + i - 1))
  conf="$dir/node-$i.toml"
  { cat "$here/node.toml"; printf 'listen = "127.0.0.1:%s"\nnode_id = "node-%s"\nredis_url = "%s"\n' "$port" "$i" "$redis_url"; } >"$conf"
  if [ -f "$dir/node-$i.pid" ] && kill -0 "$(cat "$dir/node-$i.pid")" 2>/dev/null; then continue; fi
  SWITCHYARD_ADMIN_TOKEN=$token "$bin" serve --config "$conf" >"$dir/node-$i.log" 2>&1 &
  echo $! >"$dir/node-$i.pid"
done
for i in $(seq 1 "$n"); do
  port=$((base + i - 1))
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  echo "node-$i: http://127.0.0.1:$port (pid $(cat "$dir/node-$i.pid"), log $dir/node-$i.log)"
done
echo "redis: $redis_url; admin token: $token"
