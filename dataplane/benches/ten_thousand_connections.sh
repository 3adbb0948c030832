#!/usr/bin/env bash
# Raccoon's benchmark shape against a real `weir gateway`: 10,000 WebSocket connections
# sending batches of 20 events, paced to RATE events/s in total. Three processes: the
# embedded mock Kafka (`weir dev --no-sink`, whose own gateway is unused), the gateway
# under test, and `weir loadgen`. On a machine with more than 2 cores, each gets cores
# of its own (taskset), so the gateway's figures are its own.
#
#   dataplane/benches/ten_thousand_connections.sh [WEIR_BINARY] [loadgen options...]
#
# Environment: RATE (150000), CONNECTIONS (10000), DURATION (60s), RAMP (2s: the
# connections' start spread over it; 0s opens them all at once), GATEWAY_CPUS (0,1),
# BROKER_CPUS and LOADGEN_CPUS (split of the other cores; unset on a 2-core machine:
# everything shares). Extra arguments go to `weir loadgen` (e.g. `--storm-at 15s`). Prints the load generator's report, the gateway's CPU, and its own latency
# histogram (receive → answer) beside the Kafka delivery histogram.
set -euo pipefail
bin=${1:-target/release/weir}
shift || true
bin=$(realpath "$bin")
rate=${RATE:-150000}
connections=${CONNECTIONS:-10000}
duration=${DURATION:-60s}
ramp=${RAMP:-2s}
cores=$(nproc)
if [ "$cores" -gt 2 ]; then
  gateway_cpus=${GATEWAY_CPUS:-0,1}
  broker_cpus=${BROKER_CPUS:-2-$(( 2 + (cores - 2) / 3 - 1 ))}
  loadgen_cpus=${LOADGEN_CPUS:-$(( 2 + (cores - 2) / 3 ))-$(( cores - 1 ))}
else
  gateway_cpus=all broker_cpus=all loadgen_cpus=all
fi
# Runs a command on those cores, as the same process (so `$!` is its pid when run with
# `&`, which runs it in a subshell that this replaces).
pin() {
  local cpus=$1
  shift
  if [ "$cpus" = all ]; then exec "$@"; else exec taskset -c "$cpus" "$@"; fi
}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work=$(mktemp -d)
cleanup() {
  kill "${gateway_pid:-}" "${broker_pid:-}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

pin "$broker_cpus" "$bin" dev --no-sink --http 127.0.0.1:0 --grpc 127.0.0.1:0 \
  --metrics 127.0.0.1:0 >"$work/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 100); do grep -q "Kafka " "$work/broker.log" && break; sleep 0.2; done
bootstrap=$(awk '/Kafka /{print $2}' "$work/broker.log")
[ -n "$bootstrap" ] || { cat "$work/broker.log"; exit 1; }

http_port=28180 metrics_port=29190
cat >"$work/gateway.yaml" <<EOF
listen: {http: "127.0.0.1:$http_port", grpc: "127.0.0.1:0", metrics: "127.0.0.1:$metrics_port"}
kafka: {bootstrapServers: "$bootstrap"}
routing: {defaultPattern: "loadgen-%s"}
EOF
pin "$gateway_cpus" "$bin" gateway -f "$work/gateway.yaml" >"$work/gateway.log" 2>&1 &
gateway_pid=$!
metrics=http://127.0.0.1:$metrics_port/metrics
for _ in $(seq 100); do curl -sf "$metrics" >/dev/null && break; sleep 0.2; done
kill -0 "$gateway_pid" 2>/dev/null || { cat "$work/gateway.log"; exit 1; }

echo "cores=$cores gateway_cpus=$gateway_cpus broker_cpus=$broker_cpus loadgen_cpus=$loadgen_cpus"
ticks() { awk '{print $14 + $15}' "/proc/$gateway_pid/stat"; }
start_ticks=$(ticks) start=$(date +%s.%N)
(pin "$loadgen_cpus" "$bin" loadgen --url "ws://127.0.0.1:$http_port/api/v1/events" \
  --metrics-url "$metrics" --connections "$connections" --batch-size 20 --rate "$rate" \
  --pipeline 1 --warmup 8s --ramp "$ramp" --duration "$duration" "$@")
end_ticks=$(ticks) end=$(date +%s.%N)
awk -v t=$(( end_ticks - start_ticks )) -v s="$start" -v e="$end" -v hz="$(getconf CLK_TCK)" \
  'BEGIN { printf "gateway_cpu_cores=%.2f\n", t / hz / (e - s) }'
# The gateway's own view: share of batches answered within each bound, and of events
# Kafka confirmed within it.
curl -s "$metrics" | awk '
  /^weir_gateway_batch_ack_seconds_bucket\{transport="websocket"/ { split($0, a, "le=\""); split(a[2], b, "\""); ack[b[1]] = $2 }
  /^weir_gateway_kafka_delivery_seconds_bucket/ { split($0, a, "le=\""); split(a[2], b, "\""); kafka[b[1]] = $2 }
  END {
    n = split("0.005 0.01 0.02 0.05 0.1 0.25", bounds, " ")
    for (i = 1; i <= n; i++) {
      le = bounds[i]
      printf "within_%sms answered=%.4f kafka_confirmed=%.4f\n", le * 1000, ack[le] / ack["+Inf"], kafka[le] / kafka["+Inf"]
    }
  }'
