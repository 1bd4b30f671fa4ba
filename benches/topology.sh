#!/bin/sh
# The throughput harness's topology: a generator, a device under test (DUT) and a sink, each in
# its own network namespace, joined by veth pairs in 198.18.0.0/15 and 2001:2::/48.
#
#   PREFIX-gen  gen0 ──── dut0  PREFIX-dut  dut1 ──── sink0  PREFIX-sink
#   198.18.0.1               198.18.0.254  198.18.1.254      198.18.1.1
#   2001:2::1                2001:2::fe    2001:2:0:1::fe    2001:2:0:1::1
#
# The DUT forwards (ip_forward, IPv6 forwarding) with permanent neighbours for both ends, so no
# ARP or ND runs during a measurement. The generator sends from gen0 with dut0's MAC as the
# destination; the sink counts and drops at XDP (`margay sink`).
#
# Usage:
#   benches/topology.sh up [PREFIX [QUEUES]]     create it (an old one of that name is removed first)
#   benches/topology.sh down [PREFIX]            remove it
#   benches/topology.sh napi PREFIX CORE IFACE.. threaded NAPI on IFACEs (dut0...), pinned to CORE
#   benches/topology.sh show [PREFIX]            print the DUT's links, routes and neighbours
#
# PREFIX defaults to mgbench, QUEUES to 1. Needs root, iproute2 and ethtool.
set -eu

cmd=${1:-}
prefix=${2:-mgbench}
gen=$prefix-gen dut=$prefix-dut sink=$prefix-sink

GEN_MAC=02:4d:00:00:00:01
DUT0_MAC=02:4d:00:00:00:fe
DUT1_MAC=02:4d:00:00:01:fe
SINK_MAC=02:4d:00:00:01:01

down() {
    for ns in "$gen" "$dut" "$sink"; do
        ip netns del "$ns" 2>/dev/null || true
    done
}

up() {
    queues=${1:-1}
    down
    for ns in "$gen" "$dut" "$sink"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip link add gen0 netns "$gen" address $GEN_MAC numtxqueues "$queues" numrxqueues "$queues" \
        type veth peer name dut0 netns "$dut" address $DUT0_MAC numtxqueues "$queues" numrxqueues "$queues"
    ip link add dut1 netns "$dut" address $DUT1_MAC numtxqueues "$queues" numrxqueues "$queues" \
        type veth peer name sink0 netns "$sink" address $SINK_MAC numtxqueues "$queues" numrxqueues "$queues"

    ip netns exec "$dut" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
        net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    ip -n "$gen" addr add 198.18.0.1/24 dev gen0
    ip -n "$gen" addr add 2001:2::1/64 dev gen0 nodad
    ip -n "$dut" addr add 198.18.0.254/24 dev dut0
    ip -n "$dut" addr add 2001:2::fe/64 dev dut0 nodad
    ip -n "$dut" addr add 198.18.1.254/24 dev dut1
    ip -n "$dut" addr add 2001:2:0:1::fe/64 dev dut1 nodad
    ip -n "$sink" addr add 198.18.1.1/24 dev sink0
    ip -n "$sink" addr add 2001:2:0:1::1/64 dev sink0 nodad
    for l in "$gen gen0" "$dut dut0" "$dut dut1" "$sink sink0"; do
        set -- $l
        ip -n "$1" link set "$2" up
        # Frames cross unchanged where Margay forwards; the kernel must not leave L4 checksums
        # to a NIC that is not there.
        ip netns exec "$1" ethtool -K "$2" tx off >/dev/null
    done
    ip -n "$gen" route add default via 198.18.0.254
    ip -n "$gen" -6 route add default via 2001:2::fe
    ip -n "$sink" route add default via 198.18.1.254
    ip -n "$sink" -6 route add default via 2001:2:0:1::fe
    # Permanent neighbours on the DUT: no resolution traffic while measuring.
    ip -n "$dut" neigh replace 198.18.1.1 lladdr $SINK_MAC dev dut1 nud permanent
    ip -n "$dut" neigh replace 2001:2:0:1::1 lladdr $SINK_MAC dev dut1 nud permanent
    ip -n "$dut" neigh replace 198.18.0.1 lladdr $GEN_MAC dev dut0 nud permanent
    ip -n "$dut" neigh replace 2001:2::1 lladdr $GEN_MAC dev dut0 nud permanent
}

# Threaded NAPI for IFACEs (gen0, dut0, dut1, sink0), each NAPI kthread pinned to CORE. veth
# has NAPI only with GRO or XDP on, so GRO is turned on first.
napi() {
    core=$1
    shift
    for ifc in "$@"; do
        case "$ifc" in
            gen*) ns=$gen ;;
            sink*) ns=$sink ;;
            *) ns=$dut ;;
        esac
        ip netns exec "$ns" ethtool -K "$ifc" gro on >/dev/null
        ip netns exec "$ns" sh -c "echo 1 > /sys/class/net/$ifc/threaded"
    done
    # The kthreads are named napi/IFACE-ID; pgrep sees every namespace's.
    for ifc in "$@"; do
        pids=$(pgrep "^napi/$ifc-" || true)
        [ -n "$pids" ] || { echo "no napi/$ifc- kthread" >&2; exit 1; }
        for p in $pids; do taskset -pc "$core" "$p" >/dev/null; done
    done
}

case "$cmd" in
    up) up "${3:-1}" ;;
    down) down ;;
    napi)
        [ $# -ge 4 ] || { echo "usage: $0 napi PREFIX CORE IFACE..." >&2; exit 2; }
        shift 2
        napi "$@"
        ;;
    show)
        ip -n "$dut" -br addr
        ip -n "$dut" route
        ip -n "$dut" neigh
        ;;
    *)
        sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
