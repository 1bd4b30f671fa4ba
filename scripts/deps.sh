#!/usr/bin/env bash
# Installs the Debian packages Margay needs for one purpose, only those that are missing.
#
#   scripts/deps.sh build   # to build margay
#   scripts/deps.sh test    # to build and run the test suite
#   scripts/deps.sh bench   # to run the benchmarks (adds dpdk-dev: dpdk-test-acl, dpdk-testpmd
#                           # and its AF_XDP driver)
#
# Needs root (or sudo) only when something is missing. Needs a Rust toolchain (cargo) already.
set -euo pipefail

purpose=${1:-build}
# clang compiles the XDP program; libelf/zlib/m4 build the vendored libbpf and libxdp; protoc
# builds the etcd client's gRPC code (libprotobuf-dev: the well-known .proto files it imports).
build=(gcc make pkg-config liblzma-dev xz-utils clang m4 libelf-dev zlib1g-dev linux-libc-dev protobuf-compiler libprotobuf-dev)
# What the demo and the end-to-end tests drive: namespaces, veth, ping, curl, iperf3, nftables.
net=(iproute2 iputils-ping curl iperf3 ethtool nftables)
case "$purpose" in
  build) want=("${build[@]}" "${net[@]}") ;;
  test) want=("${build[@]}" "${net[@]}" tshark nfdump socat util-linux fonts-dejavu-core python3 python3-jsonschema etcd-server openssl) ;;
  bench) want=("${build[@]}" "${net[@]}" python3 dpdk-dev librte-net-af-xdp23 fonts-dejavu-core linux-perf) ;;
  *) echo "usage: $0 build|test|bench" >&2; exit 2 ;;
esac

if ! command -v cargo >/dev/null 2>&1; then
  echo "deps: cargo not found: install a Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi

missing=()
for pkg in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}" >&2
sudo=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
    echo "deps: need root to apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
