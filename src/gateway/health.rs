//! Channel health: a circuit breaker per channel, and what admins see of it. A channel whose
//! calls fail `upstream.breaker_failures` times in a row (connect error, timeout, 429, 5xx) is
//! left out of routing for `upstream.breaker_cooldown_ms`; then one request is let through as a
//! probe: success closes the breaker, failure opens it for another cool-down. State is per
//! instance (each instance sees its own view of an upstream); it survives catalog reloads
//! because it is keyed by channel id, not held in the catalog snapshot.

use crate::metrics as m;
use crate::provider::Channel;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Routed normally.
    Closed,
    /// Left out until its cool-down ends.
    Open,
    /// Cool-down over: one probe request is (or may be) in flight.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of the `tollgate_channel_state` gauge.
    fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    failures_in_a_row: u32,
    open_until: Option<Instant>,
    probing: bool,
    successes: u64,
    failures: u64,
    last_error: Option<String>,
    last_error_at_ms: Option<i64>,
    last_success_at_ms: Option<i64>,
}

impl Entry {
    fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }
}

/// What an admin sees of one channel's health on this instance.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthView {
    pub state: &'static str,
    pub failures_in_a_row: u32,
    pub successes: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
    pub last_success_at_ms: Option<i64>,
    /// Milliseconds until an open breaker lets a probe through.
    pub retry_in_ms: Option<u64>,
}

/// Every channel's breaker on this instance.
pub struct Health {
    entries: Mutex<HashMap<i64, Entry>>,
    failures_to_open: u32,
    cooldown: Duration,
}

impl Health {
    pub fn new(failures_to_open: u32, cooldown: Duration) -> Health {
        Health {
            entries: Mutex::new(HashMap::new()),
            failures_to_open: failures_to_open.max(1),
            cooldown,
        }
    }

    fn with<T>(&self, id: i64, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(entries.entry(id).or_default())
    }

    /// Whether a request may be sent to `channel` now; a half-open breaker admits one probe.
    pub fn allow(&self, channel: &Channel) -> bool {
        self.with(channel.id, |e| match e.state(Instant::now()) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen if e.probing => false,
            BreakerState::HalfOpen => {
                e.probing = true;
                true
            }
        })
    }

    /// Records a call that `channel` answered (`outcome`: `ok`, or `client_error` for a 4xx
    /// that is about the request, not the channel).
    pub fn success(&self, channel: &Channel, outcome: &'static str) {
        metrics::counter!(m::UPSTREAM_REQUESTS, "channel" => channel.name.clone(), "outcome" => outcome)
            .increment(1);
        let changed = self.with(channel.id, |e| {
            // The gauge is written on a change of state (and the first call), not every call.
            let changed = e.open_until.is_some() || e.successes + e.failures == 0;
            e.successes += 1;
            e.failures_in_a_row = 0;
            e.open_until = None;
            e.probing = false;
            e.last_success_at_ms = Some(crate::clock::now_ms());
            changed
        });
        if changed {
            metrics::gauge!(m::CHANNEL_STATE, "channel" => channel.name.clone())
                .set(BreakerState::Closed.gauge());
        }
    }

    /// Records a failed call (`outcome` is its metric label); may open the breaker.
    pub fn failure(&self, channel: &Channel, outcome: &'static str, error: &str) {
        metrics::counter!(m::UPSTREAM_REQUESTS, "channel" => channel.name.clone(), "outcome" => outcome)
            .increment(1);
        let now = Instant::now();
        let state = self.with(channel.id, |e| {
            e.failures += 1;
            e.failures_in_a_row += 1;
            e.last_error = Some(error.chars().take(500).collect());
            e.last_error_at_ms = Some(crate::clock::now_ms());
            let was_probe = e.probing;
            e.probing = false;
            if was_probe || e.failures_in_a_row >= self.failures_to_open {
                e.open_until = Some(now + self.cooldown);
            }
            e.state(now)
        });
        if state == BreakerState::Open {
            tracing::warn!(channel = %channel.name, cooldown_ms = self.cooldown.as_millis() as u64, "channel circuit breaker open");
        }
        metrics::gauge!(m::CHANNEL_STATE, "channel" => channel.name.clone()).set(state.gauge());
    }

    /// Records an upstream answer with HTTP `status` (401/403 disable the channel: see [`super::failover`]):
    /// 2xx and other 4xx (about the request) count as the channel working, 429 and 5xx as
    /// failures; `detail` is the error shown to admins.
    pub fn record_answer(&self, channel: &Channel, status: u16, detail: &str) {
        match status {
            429 => self.failure(channel, "rate_limited", detail),
            500.. => self.failure(channel, "server_error", detail),
            200..=299 => self.success(channel, "ok"),
            _ => self.success(channel, "client_error"),
        }
    }

    /// Records a call whose failure says nothing about the channel (the client hung up).
    pub fn release_probe(&self, channel: &Channel) {
        self.with(channel.id, |e| e.probing = false);
    }

    /// The health of channel `id` on this instance.
    pub fn view(&self, id: i64) -> HealthView {
        let now = Instant::now();
        self.with(id, |e| HealthView {
            state: e.state(now).as_str(),
            failures_in_a_row: e.failures_in_a_row,
            successes: e.successes,
            failures: e.failures,
            last_error: e.last_error.clone(),
            last_error_at_ms: e.last_error_at_ms,
            last_success_at_ms: e.last_success_at_ms,
            retry_in_ms: e
                .open_until
                .filter(|&u| u > now)
                .map(|u| (u - now).as_millis() as u64),
        })
    }

    /// Forgets channel `id` (deleted, or re-enabled by an admin).
    pub fn reset(&self, id: i64) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.remove(&id);
    }
}
