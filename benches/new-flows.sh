#!/bin/bash
# New flows through the DUT with the XDP fast path off and on: N one-packet UDP flows from the
# generator (margay gen --flows N --count N), the DUT's flows_started and the sink's count, in
# the throughput harness's topology (benches/topology.sh), one DUT core. Not part of the
# harness yet; docs/benchmarks.md cites it.
#
#   cargo build --release -p margay && benches/new-flows.sh [N [ROUNDS]]
#
# Needs root. Builds and removes the topology mgnf-* once per setting and round.
set -u
cd "$(dirname "$0")/.."
M=target/release/margay
N=${1:-1000000}
ROUNDS=${2:-1}
work=$(mktemp -d)
trap 'pkill -f "margay run --config $work" 2>/dev/null; pkill -INT -f "margay sink --interface sink0" 2>/dev/null; benches/topology.sh down mgnf; rm -rf "$work"' EXIT

cat > "$work/policy.toml" <<'EOF'
[[endpoint]]
name = "sink"
ips = ["198.18.1.1"]
labels = { app = "sink" }

[[policy]]
name = "sink-in"
selector = "app == 'sink'"
types = ["ingress"]
  [[policy.ingress]]
  action = "allow"
  protocol = "udp"
  source = { nets = ["198.18.0.0/15"] }
  destination = { ports = [9] }
EOF

config() {
    cat <<EOF
policy = "$work/policy.toml"
[[interface]]
name = "dut0"
[[interface]]
name = "dut1"
[[route]]
to = "198.18.0.0/24"
interface = "dut0"
[[route]]
to = "198.18.1.0/24"
interface = "dut1"
[[neighbour]]
ip = "198.18.0.1"
mac = "02:4d:00:00:00:01"
interface = "dut0"
[[neighbour]]
ip = "198.18.1.1"
mac = "02:4d:00:00:01:01"
interface = "dut1"
[daemon]
cores = [1]
control_socket = "$work/ctl.sock"
fast_path = "$1"
EOF
}

for round in $(seq "$ROUNDS"); do
    for fp in off xdp; do
        benches/topology.sh up mgnf >/dev/null
        config "$fp" > "$work/node-$fp.toml"
        rm -f "$work/ctl.sock"
        ip netns exec mgnf-dut $M run --config "$work/node-$fp.toml" > "$work/margay-$fp.log" 2>&1 &
        for _ in $(seq 100); do [ -S "$work/ctl.sock" ] && break; sleep 0.1; done
        sleep 0.5
        benches/topology.sh napi mgnf 1 dut0 dut1
        ip netns exec mgnf-sink taskset -c 0 $M sink --interface sink0 --json --duration 3600 > "$work/sink.json" 2>&1 &
        sleep 1
        benches/topology.sh napi mgnf 0 sink0
        gen=$(ip netns exec mgnf-gen taskset -c 0 $M gen --interface gen0 --dst-mac 02:4d:00:00:00:fe \
            --src 198.18.0.1 --dst 198.18.1.1 --flows "$N" --count "$N" --duration 60 --json)
        sleep 1
        stats=$(ip netns exec mgnf-dut $M ctl --socket "$work/ctl.sock" stats)
        pkill -INT -f "margay sink --interface sink0"
        sleep 0.5
        pkill -TERM -f "margay run --config $work/node-$fp.toml"
        sleep 1
        echo "round $round fast_path=$fp"
        echo "  generator: $gen"
        echo "  sink:      $(tail -1 "$work/sink.json")"
        echo "  dut:       $(echo "$stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print({k: s.get(k) for k in ["flows_started", "offloaded", "offload_failed", "tx_packets", "dropped"]})')"
        benches/topology.sh down mgnf
    done
done
