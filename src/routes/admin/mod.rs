//! The admin API under `/api/v1/admin`, in the platform envelope. One file per resource. Every
//! handler requires an admin caller; changes to keys, users, models and channels take effect on
//! this instance at once (caches are cleared or the catalog reloaded before the reply) and reach
//! the other instances through [`crate::cluster`].

pub mod channels;
mod keys;
mod models;
pub mod registry;
pub mod usage;
pub mod users;
mod writing;

use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::Router;
use serde::Deserialize;
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(users::router())
        .merge(keys::router())
        .merge(channels::router())
        .merge(models::router())
        .merge(usage::router())
        .merge(writing::router())
}

/// Reloads the routing catalog so an admin change applies to the next request on this instance.
pub async fn reload_catalog(state: &AppState) -> Result<(), ApiError> {
    state
        .announce(crate::cluster::Change::Catalog)
        .await
        .map_err(ApiError::from)
}

/// `Some(None)` for an explicit `null`, `None` when the field is absent.
pub fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The success envelope.
pub fn ok(data: impl serde::Serialize) -> Json<Value> {
    Json(json!({"success": true, "code": 200, "message": "success", "data": data}))
}

/// `?page=&page_size=` (page from 1; size default 20, at most 100).
#[derive(Debug, Deserialize)]
pub struct Page {
    page: Option<String>,
    page_size: Option<String>,
}

impl Page {
    /// `(page, page_size, offset)`, or a 400 naming the bad parameter.
    pub fn resolve(&self) -> Result<(i64, i64, i64), ApiError> {
        let parse =
            |v: &Option<String>, name: &str, default: i64, max: i64| -> Result<i64, ApiError> {
                match v {
                    None => Ok(default),
                    Some(s) => match s.parse::<i64>() {
                        Ok(n) if (1..=max).contains(&n) => Ok(n),
                        _ => Err(ApiError::InvalidInput(format!(
                            "{name} must be an integer from 1 to {max}"
                        ))),
                    },
                }
            };
        let page = parse(&self.page, "page", 1, 1_000_000)?;
        let size = parse(&self.page_size, "page_size", 20, 100)?;
        Ok((page, size, (page - 1) * size))
    }
}

/// A paged list in the envelope's `data`.
pub fn paged(total: i64, page: i64, page_size: i64, items: Vec<Value>) -> Json<Value> {
    ok(json!({"total": total, "page": page, "page_size": page_size, "items": items}))
}

/// Unix milliseconds as RFC 3339 (UTC).
pub fn iso(ms: i64) -> Value {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map_or(Value::Null, Value::String)
}

/// Parses an RFC 3339 time (or a bare `YYYY-MM-DD`, as midnight UTC) into unix milliseconds.
pub fn parse_time(field: &str, text: &str) -> Result<i64, ApiError> {
    use time::format_description::well_known::Rfc3339;
    let parsed = time::OffsetDateTime::parse(text, &Rfc3339).or_else(|_| {
        let date_format = time::macros::format_description!("[year]-[month]-[day]");
        let naive =
            time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
        time::PrimitiveDateTime::parse(text, &naive)
            .map(|t| t.assume_utc())
            .or_else(|_| time::Date::parse(text, &date_format).map(|d| d.midnight().assume_utc()))
    });
    match parsed {
        Ok(t) => Ok(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)),
        Err(_) => Err(ApiError::InvalidInput(format!(
            "{field}: expected an ISO-8601 time such as 2030-01-31T00:00:00Z, got {text:?}"
        ))),
    }
}

/// Parses a path id.
pub fn path_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|&n| n > 0).ok_or_else(|| {
        ApiError::InvalidInput(format!("id must be a positive integer, got {raw:?}"))
    })
}

/// Accepts only `active` or `disabled`.
pub fn parse_status(field: &str, s: &str) -> Result<&'static str, ApiError> {
    match s {
        "active" => Ok("active"),
        "disabled" => Ok("disabled"),
        other => Err(ApiError::InvalidInput(format!(
            "{field}: must be \"active\" or \"disabled\", got {other:?}"
        ))),
    }
}
