//! Money and metering rules: the [`money::Micros`] newtype, token pricing, and the
//! reservation → settlement life cycle of a request ([`settle`]). SQL lives in `db/`.

pub mod book;
pub mod money;
pub mod pricing;
pub mod reconcile;
pub mod settle;
pub mod usage;
pub mod verify;

pub use money::Micros;
pub use pricing::{Pricing, TokenPrice, TokenUsage, per_unit};
pub use usage::{PaidBy, UsageSource, UsageStatus};
