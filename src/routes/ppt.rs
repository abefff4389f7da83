//! `POST /api/v1/ppt/generate` (seed 001): `{"topic","outline","requirements","model_id"}` →
//! `{"ppt_id","download_url","credits_used","slides","file_id"}` in the platform envelope. The
//! model writes the deck as JSON (`studio::ppt`), Tollgate writes the .pptx and stores it;
//! `download_url` is a signed, expiring Tollgate URL. The price is the `ppt_deck` tool's
//! (30 credits by default; admins change it under `/api/v1/admin/writing/tools/ppt_deck`).

use super::extract::{PlatformUser, RequestId, parse_json};
use crate::billing::Micros;
use crate::db;
use crate::error::ApiError;
use crate::state::AppState;
use crate::studio::ppt::{self, PptJob};
use crate::studio::tools;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use serde_json::{Map, Value, json};

pub fn router() -> Router<AppState> {
    Router::new().route("/ppt/generate", post(generate))
}

async fn generate(
    State(state): State<AppState>,
    PlatformUser(caller, _): PlatformUser,
    RequestId(request_id): RequestId,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tool = db::writing_tools::get(&state.db, tools::PPT.tool_type)
        .await?
        .filter(|t| t.enabled != 0)
        .ok_or_else(|| ApiError::NotFound("PPT generation is switched off".into()))?;
    let body: Map<String, Value> = parse_json(&body)?;
    let inputs = tools::read_inputs(tools::PPT.fields, &body).map_err(ApiError::InvalidInput)?;
    let model =
        crate::studio::resolve_model(&state, body.get("model_id"), tool.model.as_deref()).await?;
    let (price, paid_by) = crate::studio::payment(&caller, Micros(tool.credits_cost_micros));
    let job = PptJob {
        model,
        system: inputs.render(&tool.system_prompt),
        user: inputs.render(&tool.user_template),
        price,
        paid_by,
    };
    let done = ppt::start(&state, caller, request_id, job)
        .await
        .map_err(|_| {
            ApiError::Internal("the deck generation stopped without an answer".into())
        })??;
    let url = crate::files::download_url(&state.secrets, &headers, &done.file_id);
    Ok(super::writing::generated(json!({
        "ppt_id": done.creation_id,
        "download_url": url,
        "credits_used": done.credits_used,
        "credits_used_micros": done.credits_used.0,
        "slides": done.slides,
        "file_id": done.file_id,
    })))
}
