//! How a metered request ended, as its usage record names it: closed sets, kept as strings in the
//! database (and in metric labels) and as enums in the code.

/// The usage record's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageStatus {
    /// Answered (a stream that ended normally, a whole answer, a completed video).
    Ok,
    /// Refused for its reservation (402); nothing charged.
    InsufficientBalance,
    /// The client hung up.
    ClientDisconnected,
    /// The upstream failed (5xx, a broken or unreadable answer, an error event).
    UpstreamError,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream refused the request (its own 4xx, passed on).
    UpstreamRejected,
    /// The upstream closed a stream before it finished.
    Incomplete,
    /// The output passed what was reserved for it and was cut.
    Truncated,
    /// Cut by the gateway's shutdown.
    Shutdown,
    /// A task that failed or expired (video).
    Failed,
}

impl UsageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageStatus::Ok => "ok",
            UsageStatus::InsufficientBalance => "insufficient_balance",
            UsageStatus::ClientDisconnected => "client_disconnected",
            UsageStatus::UpstreamError => "upstream_error",
            UsageStatus::UpstreamTimeout => "upstream_timeout",
            UsageStatus::UpstreamRejected => "upstream_rejected",
            UsageStatus::Incomplete => "incomplete",
            UsageStatus::Truncated => "truncated",
            UsageStatus::Shutdown => "shutdown",
            UsageStatus::Failed => "failed",
        }
    }
}

/// How a charge is paid (`usage_records.paid_by`, a creation's `paid_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaidBy {
    /// From the prepaid balance.
    Credits,
    /// By a membership (seed 001: a member's generations cost nothing from the balance).
    Membership,
}

impl PaidBy {
    pub fn as_str(self) -> &'static str {
        match self {
            PaidBy::Credits => "credits",
            PaidBy::Membership => "membership",
        }
    }

    /// The value as stored (anything else reads as [`PaidBy::Credits`]).
    pub fn parse(s: &str) -> PaidBy {
        if s == "membership" {
            PaidBy::Membership
        } else {
            PaidBy::Credits
        }
    }
}

/// Where a usage record's numbers come from (`usage_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    /// The upstream reported them.
    Provider,
    /// Counted locally (no usage arrived).
    Estimated,
    /// Nothing was generated.
    None,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Provider => "provider",
            UsageSource::Estimated => "estimated",
            UsageSource::None => "none",
        }
    }
}
