// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
// The benchmark sink: counts every frame (packets and bytes, per CPU) and drops it. With
// count_flows set before load, it also records each distinct 5-tuple (untagged IPv4 or IPv6
// without extension headers, UDP or TCP) in sink_flows, counting new ones (slot 2) and those
// that found the map full (slot 3).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

const volatile __u32 count_flows = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} sink_counts SEC(".maps");

struct flow {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

// Resized from user space before load when flows are counted.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct flow);
	__type(value, __u8);
} sink_flows SEC(".maps");

static __always_inline void add(__u32 k, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&sink_counts, &k);
	if (v)
		*v += n;
}

static __always_inline void record(void *data, void *end)
{
	struct flow f = {};
	struct ethhdr *eth = data;
	void *l4;
	if ((void *)(eth + 1) > end)
		return;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl != 5)
			return;
		__builtin_memcpy(f.src, &ip->saddr, 4);
		__builtin_memcpy(f.dst, &ip->daddr, 4);
		f.proto = ip->protocol;
		l4 = ip + 1;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return;
		__builtin_memcpy(f.src, &ip->saddr, 16);
		__builtin_memcpy(f.dst, &ip->daddr, 16);
		f.proto = ip->nexthdr;
		l4 = ip + 1;
	} else {
		return;
	}
	if (f.proto != IPPROTO_UDP && f.proto != IPPROTO_TCP)
		return;
	__u16 *ports = l4;
	if ((void *)(ports + 2) > end)
		return;
	f.sport = ports[0];
	f.dport = ports[1];
	__u8 one = 1;
	long r = bpf_map_update_elem(&sink_flows, &f, &one, BPF_NOEXIST);
	if (r == 0)
		add(2, 1);
	else if (r != -17 /* EEXIST */)
		add(3, 1);
}

SEC("xdp")
int margay_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	add(0, 1);
	add(1, end - data);
	if (count_flows)
		record(data, end);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
