//! Margay's cross-crate integration tests live in `tests/tests/`; the tooling they share is the
//! testkit (`tests/testkit`, crate `margay-testkit`).
