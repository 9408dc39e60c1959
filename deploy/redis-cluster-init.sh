#!/bin/sh
# One-shot of docker-compose.yml (service redis-cluster-init, image redis:7,
# POSIX sh): creates the Redis Cluster the first time, then waits until all
# six nodes report cluster_state:ok. The compose counterpart of what
# `scripts/stack up` does natively.
#
# First run: every node is alone (cluster_known_nodes:1), so it runs
# `redis-cli --cluster create` with 1 replica per master: 3 masters + 3
# replicas, slots split evenly. Later runs: the nodes re-form from their
# nodes.conf (kept in the volumes; each node announces a fixed IP, so the
# addresses in nodes.conf stay right), and this only waits.
#
# Nodes are addressed by IP for `--cluster create` (the cluster bus uses the
# announced IPs) and by service name for the checks.
set -eu

NODES="${REDIS_CLUSTER_NODES:-172.30.70.10:7000 172.30.70.11:7001 172.30.70.12:7002 172.30.70.13:7003 172.30.70.14:7004 172.30.70.15:7005}"
PORTS="7000 7001 7002 7003 7004 7005"
WAIT_SECS="${REDIS_CLUSTER_WAIT_SECS:-60}"

say() { echo "[redis-cluster-init] $*"; }

info_field() { # HOST PORT FIELD
  redis-cli -h "$1" -p "$2" cluster info | tr -d '\r' | sed -n "s/^$3://p"
}

known="$(info_field redis-7000 7000 cluster_known_nodes)"
if [ "$known" = 1 ]; then
  say "creating the cluster: $NODES"
  # shellcheck disable=SC2086 # one argument per node
  redis-cli --cluster create $NODES --cluster-replicas 1 --cluster-yes
else
  say "cluster already exists ($known known nodes)"
fi

i=0
while [ "$i" -lt "$WAIT_SECS" ]; do
  ok=0
  for p in $PORTS; do
    if [ "$(info_field "redis-$p" "$p" cluster_state)" = ok ]; then ok=$((ok + 1)); fi
  done
  if [ "$ok" = 6 ]; then
    say "cluster_state:ok on all 6 nodes"
    redis-cli -h redis-7000 -p 7000 cluster nodes | awk '{print "  " $2, $3}'
    exit 0
  fi
  i=$((i + 1))
  sleep 1
done
say "cluster not ok after ${WAIT_SECS}s:" >&2
redis-cli -h redis-7000 -p 7000 cluster nodes >&2
exit 1
