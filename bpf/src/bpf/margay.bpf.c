// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
// Margay's XDP program: traffic for the host itself goes to the kernel; a packet of a flow the
// workers offloaded (the fast path, `fast_path` set) is forwarded here; everything else is
// redirected into the AF_XDP socket registered for the frame's rx queue. With no socket there,
// `fail_closed` decides: pass to the kernel (fail open) or drop (fail closed).
//
// The fast path repeats what a worker decided, never decides: a worker that allowed a flow
// installs one `flows` entry per direction (the egress port, the MACs, the generation it was
// decided under); a packet matching an entry of the current generation has its MACs rewritten,
// its TTL or hop limit decremented (IPv4 checksum updated incrementally, RFC 1624) and is
// redirected through `tx_ports`, counted in the entry. SYN, FIN and RST segments, a TTL or hop
// limit that would expire, fragments, IPv4 options, IPv6 extension headers, VLAN tags, ICMP but
// echo, a bad IPv4 header checksum, anything truncated, a miss and a stale generation all go to
// the workers, as does everything when no socket is registered (the daemon is gone: the fail
// mode decides, as for any other packet).
//
// Every access is bounds-checked against data_end; a frame too short or odd to classify as host
// traffic is redirected, so the userspace parser counts it under its drop reason.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_QUEUES 256
#define MAX_HOST_ADDRS 1024
#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define ETH_P_ARP_ 0x0806
#define MAX_PORTS 64
#define TCP_FIN_SYN_RST 0x07

// Counter indexes: keep in step with `Counter` in lib.rs.
enum {
	C_RX = 0,
	C_REDIRECT,
	C_HOST_ARP,
	C_HOST_ND,
	C_HOST_ADDR,
	C_HOST_MULTICAST,
	C_HOST_OTHER_ETHERTYPE,
	C_NO_SOCKET_PASS,
	C_NO_SOCKET_DROP,
	C_FP_FORWARDED,
	C_FP_BYTES,
	C_FP_MISS,
	C_FP_STALE,
	C_FP_BYPASS,
	C_FP_TX_ERROR,
	C_COUNTERS,
};

// Set by the loader before load (fail mode; whether the fast path runs).
const volatile __u32 fail_closed = 0;
const volatile __u32 fast_path = 0;

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

// An address of the host: family (4 or 6), then the address, IPv4 in the first 4 bytes.
struct host_addr {
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_HOST_ADDRS);
	__type(key, struct host_addr);
	__type(value, __u8);
} host_addrs SEC(".maps");

// One direction of an offloaded flow, as its packets carry it (ports in network order; ICMP
// echo: the identifier as both ports). Keep in step with `FlowKey` in lib.rs.
struct fp_key {
	__u8 family;
	__u8 proto;
	__be16 sport;
	__be16 dport;
	__u16 pad;
	__u8 src[16];
	__u8 dst[16];
};

// What to do with it, and what was done. Keep in step with `FlowValue` in lib.rs.
struct fp_value {
	__u64 packets;
	__u64 bytes;
	__u64 last_seen; // bpf_ktime_get_coarse_ns(): CLOCK_MONOTONIC_COARSE
	__u32 generation;
	__u32 port; // key of tx_ports
	__u8 dst_mac[6];
	__u8 src_mac[6];
	__u32 pad;
};

// Shared by the programs of every served interface (the loader reuses the first one's maps).
// max_entries is set by the loader (twice the conntrack capacity: one entry per direction).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_key);
	__type(value, struct fp_value);
} flows SEC(".maps");

// The egress interfaces, by the workers' port numbers.
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, MAX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

// Entry 0: the current generation; an entry of another one is stale.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} generation SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

static __always_inline void count_n(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += n;
}

static __always_inline int to_kernel(__u32 idx)
{
	count(idx);
	return XDP_PASS;
}

// 0: not for the host (redirect); otherwise the counter it passes under.
static __always_inline __u32 host_traffic(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return 0;
	__u16 proto = eth->h_proto;
	void *l3 = eth + 1;

#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q_) && proto != bpf_htons(ETH_P_8021AD_))
			break;
		// A VLAN tag: TCI then the inner ethertype.
		if (l3 + 4 > data_end)
			return 0;
		proto = *(__u16 *)(l3 + 2);
		l3 += 4;
	}

	struct host_addr key = {};
	if (proto == bpf_htons(ETH_P_ARP_))
		return C_HOST_ARP;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > data_end)
			return 0;
		__u32 dst = bpf_ntohl(ip->daddr);
		if ((dst >> 28) == 0xe || dst == 0xffffffff)
			return C_HOST_MULTICAST;
		key.family = 4;
		__builtin_memcpy(key.addr, &ip->daddr, 4);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > data_end)
			return 0;
		// Neighbour discovery (router/neighbour solicitation and advertisement, redirect),
		// when ICMPv6 is the first next header, as ND requires.
		if (ip6->nexthdr == IPPROTO_ICMPV6) {
			__u8 *type = (void *)(ip6 + 1);
			if ((void *)(type + 1) > data_end)
				return 0;
			if (*type >= 133 && *type <= 137)
				return C_HOST_ND;
		}
		if (ip6->daddr.in6_u.u6_addr8[0] == 0xff)
			return C_HOST_MULTICAST;
		key.family = 6;
		__builtin_memcpy(key.addr, &ip6->daddr, 16);
	} else {
		return C_HOST_OTHER_ETHERTYPE;
	}
	if (bpf_map_lookup_elem(&host_addrs, &key))
		return C_HOST_ADDR;
	return 0;
}

// RFC 1624 eqn. 3 for one 16-bit word changed from `old` to `new` (network order).
static __always_inline __u16 csum_replace(__u16 check, __u16 old, __u16 new)
{
	__u32 sum = (__u16)~check + (__u16)~old + (__u32) new;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

// Whether the 20-byte IPv4 header at `ip` has a checksum that verifies.
static __always_inline int ipv4_checksum_ok(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

#define FP_NONE (-1)

// The fast path: XDP_REDIRECT (or XDP_DROP if the egress port is gone) for a packet of an
// offloaded flow, forwarded here; FP_NONE for everything else (the workers take it).
static __always_inline int fast_forward(struct xdp_md *ctx, void *data, void *data_end)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return FP_NONE;
	struct fp_key key = {};
	void *l4, *l3_end;
	struct iphdr *ip = 0;
	struct ipv6hdr *ip6 = 0;
	__u8 proto;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			goto bypass;
		// Options, fragments, an expiring TTL: the workers' business.
		if (ip->version != 4 || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)) || ip->ttl <= 1)
			goto bypass;
		__u16 tot = bpf_ntohs(ip->tot_len);
		if (tot < 20 || (void *)ip + tot > data_end || !ipv4_checksum_ok(ip))
			goto bypass;
		key.family = 4;
		proto = ip->protocol;
		__builtin_memcpy(key.src, &ip->saddr, 4);
		__builtin_memcpy(key.dst, &ip->daddr, 4);
		l4 = ip + 1;
		l3_end = (void *)ip + tot;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			goto bypass;
		if (ip6->version != 6 || ip6->hop_limit <= 1)
			goto bypass;
		l4 = ip6 + 1;
		l3_end = l4 + bpf_ntohs(ip6->payload_len);
		if (l3_end > data_end)
			goto bypass;
		key.family = 6;
		proto = ip6->nexthdr;
		__builtin_memcpy(key.src, &ip6->saddr, 16);
		__builtin_memcpy(key.dst, &ip6->daddr, 16);
	} else {
		// VLAN-tagged and everything else.
		goto bypass;
	}
	key.proto = proto;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end)
			goto bypass;
		if (th->doff < 5 || l4 + th->doff * 4 > l3_end)
			goto bypass;
		if (((__u8 *)th)[13] & TCP_FIN_SYN_RST)
			goto bypass;
		key.sport = th->source;
		key.dport = th->dest;
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > data_end)
			goto bypass;
		__u16 len = bpf_ntohs(uh->len);
		if (len < 8 || l4 + len > l3_end)
			goto bypass;
		key.sport = uh->source;
		key.dport = uh->dest;
	} else if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		__u8 *icmp = l4;
		if ((void *)(icmp + 8) > l3_end || (void *)(icmp + 8) > data_end)
			goto bypass;
		__u8 type = icmp[0];
		int echo = proto == IPPROTO_ICMP ? (type == 8 || type == 0) : (type == 128 || type == 129);
		if (!echo || (proto == IPPROTO_ICMP) != (key.family == 4))
			goto bypass;
		__builtin_memcpy(&key.sport, icmp + 4, 2);
		key.dport = key.sport;
	} else {
		goto bypass;
	}

	struct fp_value *v = bpf_map_lookup_elem(&flows, &key);
	if (!v) {
		count(C_FP_MISS);
		return FP_NONE;
	}
	__u32 zero = 0;
	__u32 *gen = bpf_map_lookup_elem(&generation, &zero);
	if (!gen || v->generation != *gen) {
		count(C_FP_STALE);
		return FP_NONE;
	}
	// No socket for this queue: the daemon is gone (or going); the fail mode decides.
	__u32 queue = ctx->rx_queue_index;
	if (!bpf_map_lookup_elem(&xsks, &queue))
		return FP_NONE;

	__u64 len = data_end - data;
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, len);
	v->last_seen = bpf_ktime_get_coarse_ns();
	if (ip) {
		// The 16-bit word at offset 8 is (TTL, protocol).
		__u16 *word = (__u16 *)&ip->ttl;
		__u16 old = *word;
		ip->ttl -= 1;
		ip->check = csum_replace(ip->check, old, *word);
	} else if (ip6) {
		ip6->hop_limit -= 1;
	}
	__builtin_memcpy(eth->h_dest, v->dst_mac, 6);
	__builtin_memcpy(eth->h_source, v->src_mac, 6);
	int ret = bpf_redirect_map(&tx_ports, v->port, XDP_DROP);
	if (ret == XDP_REDIRECT) {
		count(C_FP_FORWARDED);
		count_n(C_FP_BYTES, len);
	} else {
		count(C_FP_TX_ERROR);
	}
	return ret;

bypass:
	count(C_FP_BYPASS);
	return FP_NONE;
}

SEC("xdp")
int margay_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	count(C_RX);
	__u32 host = host_traffic(data, data_end);
	if (host)
		return to_kernel(host);

	if (fast_path) {
		int fp = fast_forward(ctx, data, data_end);
		if (fp != FP_NONE)
			return fp;
	}

	__u64 fallback = fail_closed ? XDP_DROP : XDP_PASS;
	int ret = bpf_redirect_map(&xsks, ctx->rx_queue_index, fallback);
	if (ret == XDP_REDIRECT)
		count(C_REDIRECT);
	else
		count(fail_closed ? C_NO_SOCKET_DROP : C_NO_SOCKET_PASS);
	return ret;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
