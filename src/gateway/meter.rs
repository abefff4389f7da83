//! The metering door every charge goes through, whatever the endpoint (chat, completions,
//! embeddings, images, videos, and the platform's features): who pays and for which model
//! ([`route`]), the hold on the balance ([`reserve`], and [`refused`] when it does not fit), and
//! the one builder of usage records ([`Payer::record`]). Prices are computed in `billing/`;
//! settlement is `billing::settle`.

use super::auth::Caller;
use super::catalog::{Model, RouteError};
use crate::billing::book::Held;
use crate::billing::settle::settle;
use crate::billing::{Micros, PaidBy, TokenUsage, UsageSource, UsageStatus};
use crate::db::billing::{NewReservation, ReserveError, UsageRecord};
use crate::error::OpenAiError;
use crate::metrics as m;
use crate::provider::Channel;
use crate::state::AppState;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// Who pays for a request to `model_name` and where it goes: the caller's account, checked
/// against the key's allowed models, and the routable model.
pub fn route(
    state: &AppState,
    caller: &Caller,
    model_name: &str,
) -> Result<(i64, Arc<Model>), OpenAiError> {
    let user_id = caller.user_id.ok_or(OpenAiError::NoAccount)?;
    if !caller.may_use(model_name) {
        return Err(OpenAiError::ModelNotAllowed {
            model: model_name.to_owned(),
        });
    }
    let model = state.catalog.model(model_name).map_err(|e| {
        let model = model_name.to_owned();
        match e {
            RouteError::Unknown => OpenAiError::ModelNotFound { model },
            RouteError::NotPriced => OpenAiError::ModelNotPriced { model },
            RouteError::NoChannel => OpenAiError::NoChannel { model },
        }
    })?;
    Ok((user_id, model))
}

/// Who pays for a request and what it is, as its reservation and its usage record name it.
#[derive(Debug, Clone)]
pub struct Payer {
    pub request_id: Arc<str>,
    pub user_id: i64,
    pub key_id: Option<i64>,
    /// The public model name.
    pub model: String,
    pub price_version: i64,
    /// The usage record's `endpoint` (`chat/completions`, `images/generations`, …).
    pub endpoint: &'static str,
    pub stream: bool,
    /// From the balance, or by a membership (a platform feature's member call, charged nothing).
    pub paid_by: PaidBy,
}

impl Payer {
    pub fn new(
        request_id: Arc<str>,
        user_id: i64,
        key_id: Option<i64>,
        model: &Model,
        endpoint: &'static str,
        stream: bool,
    ) -> Payer {
        Payer {
            request_id,
            user_id,
            key_id,
            model: model.name.clone(),
            price_version: model.price.version,
            endpoint,
            stream,
            paid_by: PaidBy::Credits,
        }
    }

    /// The usage record of this request: `reserved` was held for it, it took `latency_ms`, and
    /// it ended as `ended` says.
    pub fn record(&self, reserved: Micros, latency_ms: i64, ended: Ended) -> UsageRecord {
        let (channel_id, upstream_model) = match ended.channel {
            Some((id, upstream)) => (Some(id), Some(upstream)),
            None => (None, None),
        };
        UsageRecord {
            request_id: self.request_id.to_string(),
            user_id: self.user_id,
            key_id: self.key_id,
            model: self.model.clone(),
            upstream_model,
            channel_id,
            endpoint: self.endpoint,
            stream: self.stream,
            status: ended.status,
            http_status: ended.http_status,
            usage: ended.usage,
            usage_source: ended.source,
            reserved,
            cost: ended.cost,
            price_version: Some(self.price_version),
            latency_ms,
            ttft_ms: ended.ttft_ms,
            error: ended.error,
            units: ended.units,
            paid_by: self.paid_by,
        }
    }
}

/// How a metered request ended: the part of its usage record that its [`Payer`] does not say.
#[derive(Debug, Clone)]
pub struct Ended {
    pub status: UsageStatus,
    pub http_status: u16,
    /// The channel that answered (or was tried last) and the model name it was sent.
    pub channel: Option<(i64, String)>,
    pub usage: TokenUsage,
    pub source: UsageSource,
    /// The price of what was used (see `billing::Pricing::cost`); what is charged is capped by
    /// the reservation and the balance (`UsageRecord::chargeable`).
    pub cost: Micros,
    /// Images returned or video seconds billed (0 for token-metered endpoints).
    pub units: i64,
    pub ttft_ms: Option<i64>,
    pub error: Option<String>,
}

impl Ended {
    /// Nothing was generated and nothing is charged.
    pub fn nothing(status: UsageStatus, http_status: u16, error: Option<String>) -> Ended {
        Ended {
            status,
            http_status,
            channel: None,
            usage: TokenUsage::default(),
            source: UsageSource::None,
            cost: Micros::ZERO,
            units: 0,
            ttft_ms: None,
            error,
        }
    }

    /// Names the channel the request went to (`model`: the public model name, mapped to the
    /// channel's own).
    pub fn via(mut self, channel: Option<&Channel>, model: &str) -> Ended {
        self.channel = channel.map(|c| (c.id, c.upstream_model(model).to_owned()));
        self
    }
}

/// Holds `amount` of the payer's balance for one request, with the configured expiry; a refusal
/// becomes the client's error (see [`refused`]).
pub async fn reserve(
    state: &AppState,
    payer: &Payer,
    amount: Micros,
    started: Instant,
) -> Result<Held, OpenAiError> {
    let expires_at_ms = crate::clock::now_ms() + state.config.reservation_ttl().as_millis() as i64;
    let reservation = NewReservation {
        request_id: &payer.request_id,
        user_id: payer.user_id,
        key_id: payer.key_id,
        model: &payer.model,
        amount,
        price_version: payer.price_version,
        expires_at_ms,
    };
    let held = state
        .book
        .reserve(&state.db, &reservation)
        .await
        .map_err(|e| refused(state, payer, started, e))?;
    metrics::gauge!(m::RESERVATIONS_HELD).increment(1.0);
    Ok(held)
}

/// The client error for a hold that was refused; a 402 is also recorded as usage (nothing
/// charged), on every endpoint.
pub fn refused(state: &AppState, payer: &Payer, started: Instant, e: ReserveError) -> OpenAiError {
    match e {
        ReserveError::Insufficient { needed, available } => {
            metrics::counter!(m::RESERVATIONS_REFUSED).increment(1);
            let ended = Ended::nothing(UsageStatus::InsufficientBalance, 402, None);
            let record = payer.record(Micros::ZERO, started.elapsed().as_millis() as i64, ended);
            let state2 = state.clone();
            state.tasks.spawn(
                async move { settle(&state2.book, &state2.db, None, &record).await }
                    .instrument(tracing::Span::current()),
            );
            OpenAiError::InsufficientBalance { needed, available }
        }
        ReserveError::UserInactive => OpenAiError::Auth(super::auth::AuthError::UserDisabled),
        ReserveError::Db(e) => OpenAiError::internal(&payer.request_id, e),
    }
}

/// Runs `work` in a tracked task (a client hanging up cannot cut it short, and shutdown waits
/// for it), in the request's span, and waits for its result; `what` names it in the error if
/// the task dies.
pub async fn in_tracked_task<T, F>(
    state: &AppState,
    request_id: &str,
    what: &str,
    work: F,
) -> Result<T, OpenAiError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, OpenAiError>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    state.tasks.spawn(
        async move {
            let _ = tx.send(work.await);
        }
        .instrument(tracing::Span::current()),
    );
    rx.await.unwrap_or_else(|_| {
        Err(OpenAiError::internal(
            request_id,
            format!("{what} ended without a reply"),
        ))
    })
}
