// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
// The benchmark sink: counts every frame (packets and bytes, per CPU) and drops it.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} sink_counts SEC(".maps");

SEC("xdp")
int margay_sink(struct xdp_md *ctx)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&sink_counts, &k);
	if (v)
		*v += 1;
	k = 1;
	v = bpf_map_lookup_elem(&sink_counts, &k);
	if (v)
		*v += ctx->data_end - ctx->data;
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
