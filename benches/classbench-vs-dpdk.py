#!/usr/bin/env python3
"""Margay's classifier and DPDK rte_acl (dpdk-test-acl) side by side on the same ClassBench files.

For each rule set it runs, interleaved and repeated, both pinned to CPU 1, `margay classbench --json` and
`dpdk-test-acl` with each of its algorithms (scalar, sse, and avx2 where the CPU has it), the
same trace, one core, bursts of 256, 10 passes. It checks Margay's answers against the trace's
verified column (a mismatch fails the run), takes the best repetition of each (the machine is
shared: the best is the least disturbed), and prints lookup rate, build time and memory with
Margay's ratio to DPDK's best algorithm.

DPDK's build time comes from benches/dpdk/build_timer.c (LD_PRELOAD around rte_acl_build), its
memory from the "Gen phase ... total" line of --log-level=acl,debug.

Usage: benches/classbench-vs-dpdk.py [--sets acl1_10k,fw1_10k] [--reps 3] [--json FILE]
       [--classbench DIR] [--margay PATH]
Needs: dpdk-test-acl (Debian package dpdk-dev), gcc, xz. Run from the repository root or anywhere.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_SETS = ["acl1_10k", "fw1_10k", "ipc1_10k", "acl1_100k", "fw1_100k", "ipc1_100k"]


def die(msg):
    print(f"classbench-vs-dpdk: {msg}", file=sys.stderr)
    sys.exit(2)


def run(cmd, env=None, timeout=1800):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def margay_once(margay, rules, trace):
    # Same core as dpdk-test-acl's "-l 1".
    code, out, err = run(["taskset", "-c", "1", margay, "classbench", "--rules", rules, "--trace", trace, "--json"])
    if code not in (0, 1):
        die(f"margay failed ({code}): {err.strip()}")
    r = json.loads(out)
    if r["mismatches"] != 0 or code != 0:
        die(f"margay gave {r['mismatches']} wrong answers on {rules}: {err.strip()}")
    return {"mlps": r["mlookups_per_s"], "build_ms": r["build_ms"], "mem": r["memory_bytes"], "trees": r["trees"]}


def dpdk_once(shim, rules, trace, alg):
    env = dict(os.environ, LD_PRELOAD=shim)
    cmd = ["dpdk-test-acl", "-l", "1", "--no-huge", "-m", "4096", "--no-pci", "--no-shconf",
           "--log-level=acl,debug", "--", f"--rulesf={rules}", f"--tracef={trace}",
           "--rulenum=100000", "--tracenum=1200000", "--bldcat=1", "--runcat=1",
           "--tracestep=256", "--iter=10", "--verbose=0", f"--alg={alg}"]
    code, out, err = run(cmd, env=env)
    text = out + err
    rate = re.search(r"search_ip5tuples.*?([0-9.]+) pkt/sec", text)
    build = re.search(r"rte_acl_build_seconds=([0-9.]+)", text)
    mem = re.search(r"total: (\d+) bytes", text)
    if code != 0 or not rate:
        die(f"dpdk-test-acl --alg={alg} failed ({code}):\n{text[-2000:]}")
    return {"mlps": float(rate.group(1)) / 1e6,
            "build_ms": float(build.group(1)) * 1e3 if build else float("nan"),
            "mem": int(mem.group(1)) if mem else 0}


def best(runs):
    return {"mlps": max(r["mlps"] for r in runs),
            "build_ms": min(r["build_ms"] for r in runs),
            "mem": runs[0]["mem"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default=",".join(ALL_SETS), help="comma-separated rule sets (default: the 10k and 100k sets)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions; the best of each is reported (default 3)")
    ap.add_argument("--classbench", default=os.path.join(REPO, "..", "shared", "classbench"), help="folder with <set>.rules and <set>.trace.xz")
    ap.add_argument("--margay", default=os.path.join(REPO, "target", "release", "margay"), help="margay binary (built if it is the default and missing)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    a = ap.parse_args()

    for tool in ("dpdk-test-acl", "gcc", "xz", "taskset"):
        if not shutil.which(tool):
            die(f"{tool} not found (apt-get install dpdk-dev gcc xz-utils)")
    if not os.path.exists(a.margay):
        subprocess.run(["cargo", "build", "--release", "-p", "margay"], cwd=REPO, check=True)
    algs = ["scalar", "sse"] + (["avx2"] if "avx2" in open("/proc/cpuinfo").read() else [])

    with tempfile.TemporaryDirectory(prefix="margay-vs-dpdk-") as tmp:
        shim = os.path.join(tmp, "build_timer.so")
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", shim, os.path.join(REPO, "benches", "dpdk", "build_timer.c"), "-ldl"], check=True)
        results = []
        for s in a.sets.split(","):
            rules = os.path.join(a.classbench, f"{s}.rules")
            trace = os.path.join(tmp, f"{s}.trace")
            if not os.path.exists(rules):
                die(f"{rules} not found (--classbench DIR)")
            with open(trace, "wb") as f:
                subprocess.run(["xz", "-dc", os.path.join(a.classbench, f"{s}.trace.xz")], stdout=f, check=True)
            m_runs, d_runs = [], {alg: [] for alg in algs}
            for rep in range(a.reps):
                m_runs.append(margay_once(a.margay, rules, trace))
                for alg in algs:
                    d_runs[alg].append(dpdk_once(shim, rules, trace, alg))
                print(f"  {s} rep {rep + 1}/{a.reps}: margay {m_runs[-1]['mlps']:.2f}, " +
                      ", ".join(f"{alg} {d_runs[alg][-1]['mlps']:.2f}" for alg in algs) + " M lookups/s", file=sys.stderr)
            os.remove(trace)
            m = best(m_runs)
            d = {alg: best(r) for alg, r in d_runs.items()}
            top = max(algs, key=lambda alg: d[alg]["mlps"])
            results.append({"set": s, "margay": m, "dpdk": d, "dpdk_best_alg": top,
                            "lookup_ratio": m["mlps"] / d[top]["mlps"],
                            "build_ratio": d[top]["build_ms"] / m["build_ms"],
                            "memory_ratio": d[top]["mem"] / m["mem"] if m["mem"] else float("inf")})

    print(f"\nmargay vs dpdk-test-acl, 1 core, burst 256, 10 passes, best of {a.reps} interleaved runs")
    print(f"{'set':<10} {'margay M/s':>10} {'dpdk best':>15} {'ratio':>6} | {'build ms':>9} {'dpdk ms':>9} {'ratio':>7} | {'MiB':>6} {'dpdk MiB':>9} {'ratio':>7}")
    for r in results:
        m, d = r["margay"], r["dpdk"][r["dpdk_best_alg"]]
        print(f"{r['set']:<10} {m['mlps']:>10.2f} {d['mlps']:>8.2f} {r['dpdk_best_alg']:>6} {r['lookup_ratio']:>5.2f}x |"
              f" {m['build_ms']:>9.1f} {d['build_ms']:>9.1f} {r['build_ratio']:>6.0f}x |"
              f" {m['mem'] / 2**20:>6.2f} {d['mem'] / 2**20:>9.2f} {r['memory_ratio']:>6.0f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
