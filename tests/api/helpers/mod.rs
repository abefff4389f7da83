//! Test harness, by concern: which database a test runs on and the both-backends macro
//! ([`backend`]), the real app in process and what tests ask of it ([`app`]), the real binary as
//! a child process ([`server`]). Fakes of third parties are in `crate::fakes`.

pub mod app;
pub mod backend;
pub mod server;

pub use crate::fakes::openai::*;
pub use app::*;
pub use backend::*;
pub use server::*;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
/// The master key test gateways seal channel credentials with.
pub const MASTER_KEY: &str = "test-master-key-0123456789abcdefghijkl";

/// A random number for unique names.
pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
