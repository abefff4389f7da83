//! One file per platform, each the same shape as `provider/*`: base URLs from config (tests
//! point them at local fakes), typed outcomes.

pub mod bluesky;
pub mod mastodon;
pub mod threads;
pub mod x;
