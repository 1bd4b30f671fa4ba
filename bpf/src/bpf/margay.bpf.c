// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
// Margay's XDP program: traffic for the host itself goes to the kernel; everything else is
// redirected into the AF_XDP socket registered for the frame's rx queue. With no socket there,
// `fail_closed` decides: pass to the kernel (fail open) or drop (fail closed).
//
// Every access is bounds-checked against data_end; a frame too short or odd to classify as host
// traffic is redirected, so the userspace parser counts it under its drop reason.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_QUEUES 256
#define MAX_HOST_ADDRS 1024
#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define ETH_P_ARP_ 0x0806

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
	C_COUNTERS,
};

// Set by the loader before load (fail mode).
const volatile __u32 fail_closed = 0;

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

SEC("xdp")
int margay_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	count(C_RX);
	__u32 host = host_traffic(data, data_end);
	if (host)
		return to_kernel(host);

	__u64 fallback = fail_closed ? XDP_DROP : XDP_PASS;
	int ret = bpf_redirect_map(&xsks, ctx->rx_queue_index, fallback);
	if (ret == XDP_REDIRECT)
		count(C_REDIRECT);
	else
		count(fail_closed ? C_NO_SOCKET_DROP : C_NO_SOCKET_PASS);
	return ret;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
