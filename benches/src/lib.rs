//! Benchmarks live in `benches/benches/` (criterion) and `benches/*.sh` (side-by-side scripts).
