//! The creation studio: the 14 writing tools of seed 001 ([`tools`]), each a prompt template and
//! a flat price, run by [`generate`] through the gateway's metering door
//! (`gateway::chat::chat_as`, in process) and saved as a creation (`db::creations`).

pub mod generate;
pub mod image;
pub mod ppt;
pub mod pptx;
pub mod tools;

use crate::billing::Micros;
use crate::db;
use crate::error::ApiError;
use crate::gateway::auth::Caller;
use crate::metrics as m;
use crate::state::AppState;
use generate::PaidBy;
use serde_json::Value;

/// What `caller` pays for something priced `price`, and how: a member pays nothing (seed 001:
/// members use their membership first).
pub fn payment(caller: &Caller, price: Micros) -> (Micros, PaidBy) {
    if caller.is_member {
        (Micros::ZERO, PaidBy::Membership)
    } else {
        (price, PaidBy::Credits)
    }
}

/// Counts one finished generation of `tool` (of `addon`): `ok` with what it charged, `refused`
/// before any upstream call (balance, limits, input), or `failed`.
pub fn count_outcome(tool: String, addon: &'static str, outcome: Result<Micros, &ApiError>) {
    let label = match outcome {
        Ok(_) => "ok",
        Err(
            ApiError::InsufficientCredits { .. }
            | ApiError::RateLimited(_)
            | ApiError::InvalidInput(_)
            | ApiError::Forbidden(_)
            | ApiError::NotFound(_),
        ) => "refused",
        Err(_) => "failed",
    };
    metrics::counter!(m::ADDON_GENERATIONS, "tool" => tool, "outcome" => label).increment(1);
    if let Ok(charged) = outcome
        && charged.0 > 0
    {
        metrics::counter!(m::ADDON_CHARGED, "addon" => addon).increment(charged.0 as u64);
    }
}

/// The public model name a generation runs on: `model_id` as a registry id (a number, or a
/// string of digits), a registry name, or a model name; without it, `default` (the tool's),
/// else the first routable model by name. An unknown, inactive or unroutable model is a 400.
pub async fn resolve_model(
    state: &AppState,
    model_id: Option<&Value>,
    default: Option<&str>,
) -> Result<String, ApiError> {
    let bad = |what: String| ApiError::InvalidInput(format!("model_id: {what}"));
    let name = match model_id {
        None | Some(Value::Null) => match default {
            Some(d) => d.to_owned(),
            None => state
                .catalog
                .models()
                .first()
                .map(|m| m.name.clone())
                .ok_or_else(|| bad("no model is available; an admin must add one".into()))?,
        },
        Some(Value::Number(n)) => {
            let id = n
                .as_i64()
                .ok_or_else(|| bad(format!("{n} is not a model id")))?;
            by_id(state, id).await?
        }
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            let id = s
                .parse::<i64>()
                .map_err(|_| bad(format!("{s} is not a model id")))?;
            by_id(state, id).await?
        }
        Some(Value::String(s)) if !s.trim().is_empty() => {
            let s = s.trim();
            if state.catalog.model(s).is_ok() {
                s.to_owned()
            } else {
                let rows = db::catalog::list_models(&state.db).await?;
                rows.into_iter()
                    .find(|m| m.display_name.as_deref() == Some(s))
                    .map(|m| m.model)
                    .ok_or_else(|| bad(format!("no model is called {s:?}")))?
            }
        }
        Some(other) => return Err(bad(format!("must be a model id or name, got {other}"))),
    };
    state.catalog.model(&name).map_err(|e| {
        bad(format!(
            "the model {name:?} is not available ({})",
            match e {
                crate::gateway::catalog::RouteError::Unknown => "unknown or inactive",
                crate::gateway::catalog::RouteError::NotPriced => "it is disabled or has no price",
                crate::gateway::catalog::RouteError::NoChannel => "no active channel serves it",
            }
        ))
    })?;
    Ok(name)
}

async fn by_id(state: &AppState, id: i64) -> Result<String, ApiError> {
    let row = db::catalog::get_model(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::InvalidInput(format!("model_id: no model has id {id}")))?;
    if row.status != "active" {
        return Err(ApiError::InvalidInput(format!(
            "model_id: the model {id} ({}) is not active",
            row.model
        )));
    }
    Ok(row.model)
}
