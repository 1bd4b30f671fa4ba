//! Margay's XDP program (C, built by libbpf-cargo) and its loader.
//!
//! Status: empty. The daemon issue adds the bounds-checked XDP program that passes host traffic
//! to the kernel and redirects the rest into AF_XDP sockets, and the loader guard that detaches
//! on drop. See `docs/architecture.md` for the plan and the pinned versions
//! (`libbpf-rs`/`libbpf-cargo` 0.25 beside `xsk-rs` 0.11).
