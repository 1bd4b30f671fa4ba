/* LD_PRELOAD shim: times rte_acl_build() for benches/classbench-vs-dpdk.py (dpdk-test-acl prints no build time). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <time.h>
struct rte_acl_ctx; struct rte_acl_config;
int rte_acl_build(struct rte_acl_ctx *ctx, const struct rte_acl_config *cfg) {
  static int (*real)(struct rte_acl_ctx *, const struct rte_acl_config *);
  if (!real) real = (int (*)(struct rte_acl_ctx *, const struct rte_acl_config *))dlsym(RTLD_NEXT, "rte_acl_build");
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  int r = real(ctx, cfg);
  clock_gettime(CLOCK_MONOTONIC, &b);
  fprintf(stderr, "build_timer: rte_acl_build_seconds=%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
  return r;
}
