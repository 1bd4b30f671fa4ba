//! The fleet's datastore: Kubernetes and Calico resources kept in etcd, one key per resource
//! ([`layout`]); the blocking client the CLI's `apply`, `get`, `delete` and `fleet status` use
//! ([`store`]); and a node's list-and-watch that feeds its policy ([`node`]). See
//! docs/guide/fleet.md.

pub mod layout;
pub mod node;
pub mod store;
pub mod yaml;

pub use layout::{Entry, KINDS, kind_segment, resolve_kind};
pub use node::{Install, STATUS_TTL_S, StoreState, Watch};
pub use store::{NodeStatus, Snapshot, Store, Written};
