//! Rate limits of the platform API (`/api/v1`, not the OpenAI routes, not admin), by route
//! class: authentication routes per client address, AI generation routes per user (members are
//! not limited), query (GET) and other routes per user. A key with a plan (free, pro, custom)
//! also counts against its hourly plan limit. Every answer carries `X-RateLimit-Limit`,
//! `X-RateLimit-Remaining` and `X-RateLimit-Reset` (unix seconds) of the tightest limit; a 429
//! carries `Retry-After`. Admin callers are not limited here.

use super::extract::{RequestId, authenticate};
use crate::config::LimitsConfig;
use crate::error::{ApiError, retry_after};
use crate::gateway::auth::Caller;
use crate::limits::{Kind, Rule, Status};
use crate::state::AppState;
use axum::extract::{ConnectInfo, OriginalUri, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;

/// A platform route's class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Auth,
    Generation,
    Query,
    Other,
}

/// The class of a platform request (`path` as the client sent it).
pub fn classify(method: &Method, path: &str) -> Class {
    let rest = path.strip_prefix("/api/v1").unwrap_or(path);
    if rest.starts_with("/auth/") {
        return Class::Auth;
    }
    let generating = ["/writing/", "/image/", "/video/", "/ppt/"]
        .iter()
        .any(|p| rest.starts_with(p))
        && rest.ends_with("/generate");
    if *method == Method::POST && generating {
        Class::Generation
    } else if *method == Method::GET || *method == Method::HEAD {
        Class::Query
    } else {
        Class::Other
    }
}

/// The client's address: the TCP peer, or the first `X-Forwarded-For` hop when trusted.
fn client_address(parts: &Parts, trust_forwarded_for: bool) -> String {
    if trust_forwarded_for
        && let Some(first) = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    {
        return first.to_owned();
    }
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string())
}

/// The rules for one request of `class` from `caller` (or an anonymous client at `address`).
pub fn rules(
    cfg: &LimitsConfig,
    class: Class,
    caller: Option<&Caller>,
    address: &str,
) -> Vec<Rule> {
    let subject = match caller.and_then(|c| c.user_id) {
        Some(u) => format!("u{u}"),
        None => format!("ip{address}"),
    };
    let (bucket, limit, window_ms) = match class {
        Class::Auth => (
            format!("p:auth:ip{address}"),
            cfg.auth_per_minute,
            MINUTE_MS,
        ),
        Class::Generation if caller.is_some_and(|c| c.is_member) => (String::new(), 0, HOUR_MS),
        Class::Generation => (format!("p:gen:{subject}"), cfg.generation_per_hour, HOUR_MS),
        Class::Query => (
            format!("p:query:{subject}"),
            cfg.query_per_minute,
            MINUTE_MS,
        ),
        Class::Other => (
            format!("p:other:{subject}"),
            cfg.other_per_minute,
            MINUTE_MS,
        ),
    };
    let mut rules = Vec::with_capacity(2);
    if limit > 0 {
        rules.push(Rule {
            bucket,
            kind: Kind::Requests,
            limit,
            window_ms,
            cost: 1,
        });
    }
    if let Some((key_id, limits)) = caller.and_then(|c| c.key_id.zip(c.limits.as_deref())) {
        let per_hour = match limits.plan.as_deref() {
            Some("free") => cfg.plan_free_per_hour,
            Some("pro") => cfg.plan_pro_per_hour,
            Some("custom") => limits.plan_per_hour.map_or(0, |n| n.max(0) as u64),
            _ => 0,
        };
        if per_hour > 0 {
            rules.push(Rule {
                bucket: format!("p:plan:k{key_id}"),
                kind: Kind::Requests,
                limit: per_hour,
                window_ms: HOUR_MS,
                cost: 1,
            });
        }
    }
    rules
}

fn set_headers(headers: &mut HeaderMap, status: Status) {
    let now_s = crate::limits::local::now_ms().div_ceil(1000);
    let reset = now_s + status.reset_ms.div_ceil(1000);
    for (name, value) in [
        ("x-ratelimit-limit", status.limit),
        ("x-ratelimit-remaining", status.remaining),
        ("x-ratelimit-reset", reset),
    ] {
        if let Ok(v) = HeaderValue::try_from(value.to_string()) {
            headers.insert(name, v);
        }
    }
}

/// The middleware on the platform routes.
pub async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| req.uri().path().to_owned(), |u| u.0.path().to_owned());
    let class = classify(req.method(), &path);
    let (mut parts, body) = req.into_parts();
    let caller = match class {
        Class::Auth => None,
        _ => authenticate(&parts, &state).await.ok(),
    };
    // The handler's extractor takes the caller from here instead of authenticating again.
    if let Some(c) = &caller {
        parts.extensions.insert(c.clone());
    }
    if caller.as_ref().is_some_and(|c| c.is_admin) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let address = client_address(&parts, state.config.limits.trust_forwarded_for);
    let rules = rules(&state.config.limits, class, caller.as_ref(), &address);
    let id = parts
        .extensions
        .get::<RequestId>()
        .cloned()
        .unwrap_or_default();
    let req = Request::from_parts(parts, body);
    let decision = match state.limits.check(&id.0, rules).await {
        Ok(d) => d,
        Err(e) => {
            let mut response = ApiError::Unavailable(e.to_string()).into_response();
            retry_after(response.headers_mut(), 1000);
            return response;
        }
    };
    let tightest = decision.tightest(Kind::Requests);
    let mut response = match decision.refusal() {
        Some((rule, retry)) => {
            let window = if rule.window_ms == HOUR_MS {
                "hour"
            } else {
                "minute"
            };
            let mut r = ApiError::RateLimited(format!(
                "too many requests: the limit is {} per {window}; retry later",
                rule.limit
            ))
            .into_response();
            retry_after(r.headers_mut(), retry.unwrap_or(rule.window_ms));
            r
        }
        None => next.run(req).await,
    };
    if let Some(status) = tightest {
        set_headers(response.headers_mut(), status);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_fall_into_their_classes() {
        assert_eq!(classify(&Method::POST, "/api/v1/auth/login"), Class::Auth);
        assert_eq!(classify(&Method::GET, "/api/v1/auth/me"), Class::Auth);
        assert_eq!(
            classify(&Method::POST, "/api/v1/writing/xiaohongshu/generate"),
            Class::Generation
        );
        assert_eq!(
            classify(&Method::POST, "/api/v1/ppt/generate"),
            Class::Generation
        );
        assert_eq!(
            classify(&Method::POST, "/api/v1/operation/referral/generate"),
            Class::Other
        );
        assert_eq!(
            classify(&Method::GET, "/api/v1/credit/balance"),
            Class::Query
        );
        assert_eq!(
            classify(&Method::POST, "/api/v1/credit/recharge"),
            Class::Other
        );
    }
}
