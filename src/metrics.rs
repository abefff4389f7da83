//! Every metric Tollgate exports, as documented constants, and the Prometheus recorder.
//! Labels are bounded: route template, method, status class, model, outcome. Never a key,
//! user id or raw path.

use crate::memo::Memo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};

/// Counter: HTTP requests, by `route` (template), `method` (a non-standard one as `other`) and
/// `status` (class, e.g. `2xx`).
pub const HTTP_REQUESTS: &str = "tollgate_http_requests_total";
/// Histogram (seconds): time to response headers, by `route` and `status`.
pub const HTTP_DURATION: &str = "tollgate_http_request_duration_seconds";
/// Histogram (seconds): time until the upstream's response headers, by `model` and `outcome`.
pub const UPSTREAM_DURATION: &str = "tollgate_upstream_duration_seconds";
/// Histogram (seconds): time to the first streamed event forwarded to the client, by `model`.
pub const TTFT: &str = "tollgate_time_to_first_token_seconds";
/// Histogram (seconds): time Tollgate added before the upstream call (auth, routing, reservation).
pub const GATEWAY_OVERHEAD: &str = "tollgate_gateway_overhead_seconds";
/// Counter: tokens, by `model` and `kind` (`input`, `output`, `cached_input`, `reasoning`).
pub const TOKENS: &str = "tollgate_tokens_total";
/// Counter: micro-credits charged, by `model`.
pub const CREDITS_CHARGED: &str = "tollgate_credits_charged_micros_total";
/// Counter: settlements, by `outcome` (the usage record's status: `ok`, `client_disconnected`,
/// `upstream_error`, …) and `usage_source` (`provider`, `estimated`, `none`).
pub const SETTLEMENTS: &str = "tollgate_settlements_total";
/// Counter: settlements that failed to write (must stay at zero).
pub const SETTLEMENT_FAILURES: &str = "tollgate_settlement_failures_total";
/// Gauge: streams currently being forwarded.
pub const ACTIVE_STREAMS: &str = "tollgate_active_streams";
/// Gauge: reservations currently held by this instance.
pub const RESERVATIONS_HELD: &str = "tollgate_reservations_held";
/// Counter: reservations refused for insufficient balance.
pub const RESERVATIONS_REFUSED: &str = "tollgate_reservations_refused_total";
/// Counter: expired reservations released by the reconciler.
pub const RECONCILER_RELEASES: &str = "tollgate_reconciler_releases_total";
/// Counter: rate-limit checks, by `outcome` (`admitted`, `refused`).
pub const LIMIT_DECISIONS: &str = "tollgate_rate_limit_decisions_total";
/// Counter: rate-limit checks Redis did not answer (the fail-open or fail-closed path ran).
pub const LIMITER_ERRORS: &str = "tollgate_rate_limiter_redis_errors_total";
/// Counter by `channel` and `outcome` (`ok`, `connect_error`, `timeout`, `rate_limited`,
/// `server_error`, `auth_error`, `error`): calls to upstream channels.
pub const UPSTREAM_REQUESTS: &str = "tollgate_upstream_requests_total";
/// Gauge by `channel`: its circuit breaker on this instance (0 closed, 1 half-open, 2 open).
pub const CHANNEL_STATE: &str = "tollgate_channel_state";
/// Counter by `channel`: channels the gateway disabled because the upstream refused their
/// credential (401/403).
pub const CHANNELS_DISABLED: &str = "tollgate_channels_disabled_total";
/// Gauge: video tasks submitted and not yet settled (as this instance last counted).
pub const VIDEO_TASKS_OPEN: &str = "tollgate_video_tasks_open";
/// Counter by `outcome`: video tasks settled (completed, failed, expired).
pub const VIDEO_TASKS_SETTLED: &str = "tollgate_video_tasks_settled_total";
/// Gauge: client connections open.
pub const OPEN_CONNECTIONS: &str = "tollgate_open_connections";
/// Counter: connections refused (503) because `server.max_connections` were open.
pub const CONNECTIONS_REFUSED: &str = "tollgate_connections_refused_total";
/// Counter by `reason` (`header_timeout`, `idle`): connections the gateway closed.
pub const CONNECTIONS_CUT: &str = "tollgate_connections_cut_total";
/// Counter: upstream SSE lines dropped because they were not well-formed SSE (no known field,
/// not UTF-8) or their `data` was not JSON.
pub const SSE_LINES_DROPPED: &str = "tollgate_sse_lines_dropped_total";
/// Counter: streams cut because the output passed what was reserved for it.
pub const OUTPUT_CUTS: &str = "tollgate_output_limit_cuts_total";
/// Counter: invalidation messages received from other instances, by `change`.
pub const INVALIDATIONS: &str = "tollgate_invalidations_received_total";
/// Studio generations by tool and outcome (`ok`, `refused` before any upstream call, `failed`).
pub const ADDON_GENERATIONS: &str = "tollgate_addon_generations_total";
/// Micro-credits the add-ons charged, by add-on (`writing`, …).
pub const ADDON_CHARGED: &str = "tollgate_addon_credits_charged_micros_total";
/// Publishes to one account, by `platform` and `outcome` (`published`, `failed`, `unconfirmed`).
pub const PUBLISHES: &str = "tollgate_publishes_total";
/// Gauge: jobs due more than `jobs.overdue_after_ms` ago and not started (or whose instance
/// died), across all instances.
pub const JOBS_OVERDUE: &str = "tollgate_jobs_overdue";
/// Histogram: how late a job started after it was due (its first claim), by `kind`.
pub const JOB_LATENESS: &str = "tollgate_job_lateness_seconds";
/// Counter: job runs ended, by `kind` and `outcome` (`succeeded`, `failed`, `cancelled`,
/// `unconfirmed`, `retry`).
pub const JOBS_FINISHED: &str = "tollgate_jobs_finished_total";

/// A settled request's counters for one model, looked up once per model instead of building a
/// labelled key and searching the registry for each on every request.
pub struct ModelCounters {
    pub charged: metrics::Counter,
    /// Tokens by kind: input, output, cached input, reasoning.
    pub tokens: [metrics::Counter; 4],
}

/// The token kinds of [`ModelCounters::tokens`], in order.
pub const TOKEN_KINDS: [&str; 4] = ["input", "output", "cached_input", "reasoning"];

/// [`ModelCounters`] for `model` (model names are few: the registry's).
pub fn model_counters(model: &str) -> Arc<ModelCounters> {
    static MEMO: Memo<Arc<ModelCounters>> = Memo::new(10_000);
    MEMO.get(model, || {
        Arc::new(ModelCounters {
            charged: metrics::counter!(CREDITS_CHARGED, "model" => model.to_owned()),
            tokens: TOKEN_KINDS
                .map(|kind| metrics::counter!(TOKENS, "model" => model.to_owned(), "kind" => kind)),
        })
    })
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// Installs the process-wide recorder once and returns its handle (several apps in one process,
/// as in tests, share it).
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            describe();
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The exporter keeps every histogram sample until it is folded into the buckets (at a scrape,
/// or here): without this, a gateway nobody scrapes grows by every request's samples.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the metrics upkeep thread; histogram samples wait for a scrape");
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        ADDON_GENERATIONS,
        "Studio generations by tool and outcome (ok, refused, failed)"
    );
    describe_counter!(
        ADDON_CHARGED,
        "Micro-credits charged by add-on features, by add-on"
    );
    describe_counter!(
        PUBLISHES,
        "Publishes to one account, by platform and outcome (published, failed, unconfirmed)"
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by route template, method and status class"
    );
    describe_histogram!(
        HTTP_DURATION,
        "Time to response headers, by route and status class"
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        "Time until the upstream's response headers"
    );
    describe_histogram!(
        TTFT,
        "Time to the first streamed event forwarded to the client"
    );
    describe_histogram!(
        GATEWAY_OVERHEAD,
        "Time spent in Tollgate before the upstream call"
    );
    describe_counter!(TOKENS, "Tokens metered, by model and kind");
    describe_counter!(CREDITS_CHARGED, "Micro-credits charged, by model");
    describe_counter!(SETTLEMENTS, "Settlements by outcome and usage source");
    describe_counter!(SETTLEMENT_FAILURES, "Settlements that could not be written");
    describe_gauge!(ACTIVE_STREAMS, "Streams being forwarded now");
    describe_gauge!(
        RESERVATIONS_HELD,
        "Balance reservations held by this instance"
    );
    describe_counter!(
        RESERVATIONS_REFUSED,
        "Reservations refused for insufficient balance"
    );
    describe_counter!(
        RECONCILER_RELEASES,
        "Expired reservations released by the reconciler"
    );
    describe_counter!(
        LIMIT_DECISIONS,
        "Rate-limit checks by outcome (admitted, refused)"
    );
    describe_counter!(
        LIMITER_ERRORS,
        "Rate-limit checks Redis did not answer (fail-open or fail-closed applied)"
    );
    describe_counter!(
        INVALIDATIONS,
        "Invalidation messages received from other instances, by change"
    );
    describe_counter!(
        UPSTREAM_REQUESTS,
        "Calls to upstream channels by channel and outcome"
    );
    describe_gauge!(
        CHANNEL_STATE,
        "Circuit breaker of each channel on this instance: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(
        CHANNELS_DISABLED,
        "Channels disabled because the upstream refused their credential (401/403)"
    );
    describe_gauge!(
        VIDEO_TASKS_OPEN,
        "Video tasks submitted and not yet settled"
    );
    describe_counter!(
        VIDEO_TASKS_SETTLED,
        "Video tasks settled, by outcome (completed, failed, expired)"
    );
    describe_gauge!(
        JOBS_OVERDUE,
        "Jobs due more than jobs.overdue_after_ms ago and not started, across all instances"
    );
    describe_histogram!(
        JOB_LATENESS,
        "How late jobs started after they were due, by kind"
    );
    describe_counter!(JOBS_FINISHED, "Job runs ended, by kind and outcome");
    // Register the counters that must be visible (at zero) from the start.
    metrics::gauge!(JOBS_OVERDUE).set(0.0);
    metrics::counter!(SETTLEMENT_FAILURES).absolute(0);
    metrics::counter!(LIMITER_ERRORS).absolute(0);
    metrics::gauge!(ACTIVE_STREAMS).set(0.0);
    metrics::gauge!(RESERVATIONS_HELD).set(0.0);
}

/// `200` → `"2xx"`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
