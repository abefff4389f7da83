//! The studio's writing tools for admins: `GET /api/v1/admin/writing/tools` (every tool, with its
//! templates), `PUT /api/v1/admin/writing/tools/{tool_type}` (`credits_cost`, `model` (`null`
//! clears the default), `system_prompt`, `user_template`, `enabled`, `name`, `description`), and
//! `GET /api/v1/admin/writing/report`: per tool, generations, credits charged and what their
//! tokens cost at the model's token prices (revenue against upstream spend).

use super::{ok, present};
use crate::billing::Micros;
use crate::billing::money::NonNegativeMicros;
use crate::db::{self, writing_tools::ToolChange, writing_tools::ToolRow};
use crate::error::ApiError;
use crate::routes::extract::{AdminCaller, ApiJson};
use crate::routes::writing::tool_json;
use crate::state::AppState;
use crate::studio::tools;
use axum::extract::{Path, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/writing/tools", get(list))
        .route("/writing/tools/{tool_type}", put(change))
        .route("/writing/report", get(report))
}

/// A tool as admins see it: the users' view and what they may change.
fn admin_tool_json(t: &ToolRow) -> Value {
    let mut v = tool_json(t);
    if let Some(fields) = v.as_object_mut() {
        fields.insert("model".into(), json!(t.model));
        fields.insert("system_prompt".into(), json!(t.system_prompt));
        fields.insert("user_template".into(), json!(t.user_template));
        fields.insert("enabled".into(), json!(t.enabled != 0));
    }
    v
}

async fn list(State(state): State<AppState>, _: AdminCaller) -> Result<Json<Value>, ApiError> {
    let rows = tools::in_seed_order(db::writing_tools::list(&state.db).await?);
    Ok(ok(rows.iter().map(admin_tool_json).collect::<Vec<_>>()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    name: Option<String>,
    description: Option<String>,
    credits_cost: Option<NonNegativeMicros>,
    #[serde(default, deserialize_with = "present")]
    model: Option<Option<String>>,
    system_prompt: Option<String>,
    user_template: Option<String>,
    enabled: Option<bool>,
}

/// A template may name only the tool's own fields.
fn check_template(tool_type: &str, what: &str, template: &str) -> Result<(), ApiError> {
    let fields = tools::fields_of(tool_type);
    for (_, _, name) in tools::placeholders(template) {
        if !fields.iter().any(|f| f.name == name) {
            let known: Vec<&str> = fields.iter().map(|f| f.name).collect();
            return Err(ApiError::InvalidInput(format!(
                "{what}: {{{{{name}}}}} is not a field of {tool_type} (its fields: {})",
                known.join(", ")
            )));
        }
    }
    if template.trim().is_empty() {
        return Err(ApiError::InvalidInput(format!("{what}: must not be empty")));
    }
    Ok(())
}

async fn change(
    State(state): State<AppState>,
    _: AdminCaller,
    Path(tool_type): Path<String>,
    ApiJson(body): ApiJson<Change>,
) -> Result<Json<Value>, ApiError> {
    if let Some(t) = &body.system_prompt {
        check_template(&tool_type, "system_prompt", t)?;
    }
    if let Some(t) = &body.user_template {
        check_template(&tool_type, "user_template", t)?;
    }
    for (what, v) in [("name", &body.name), ("description", &body.description)] {
        if v.as_ref().is_some_and(|v| v.trim().is_empty()) {
            return Err(ApiError::InvalidInput(format!("{what}: must not be empty")));
        }
    }
    if let Some(Some(model)) = &body.model
        && let Err(e) = state.catalog.model(model)
    {
        return Err(ApiError::InvalidInput(format!(
            "model: {model:?} is not a routable model ({e:?})"
        )));
    }
    let change = ToolChange {
        name: body.name,
        description: body.description,
        credits_cost_micros: body.credits_cost.map(|c| c.0.0),
        model: body.model,
        system_prompt: body.system_prompt,
        user_template: body.user_template,
        enabled: body.enabled,
    };
    let row = db::writing_tools::update(&state.db, &tool_type, &change)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "unknown writing tool {tool_type:?}; the tools are: {}",
                tools::tool_types().join(", ")
            ))
        })?;
    Ok(ok(admin_tool_json(&row)))
}

async fn report(State(state): State<AppState>, _: AdminCaller) -> Result<Json<Value>, ApiError> {
    let rows = db::creations::totals_by_tool(&state.db).await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "tool_type": r.tool_type,
                "generations": r.generations,
                "credits_charged": Micros(r.credits_micros),
                "credits_charged_micros": r.credits_micros,
                "upstream_cost": Micros(r.upstream_cost_micros),
                "upstream_cost_micros": r.upstream_cost_micros,
                "margin_micros": r.credits_micros - r.upstream_cost_micros,
            })
        })
        .collect();
    Ok(ok(items))
}
