//! The studio's writing tools as stored: price, default model, prompt templates, whether offered.
//! The defaults (`studio::tools::DEFAULTS`) are written at startup where a row is missing, so an
//! admin's change survives restarts and upgrades.

use super::{Db, read_pool, write_pool};
use crate::clock::now_ms;

/// One tool as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ToolRow {
    pub tool_type: String,
    pub name: String,
    pub description: String,
    pub credits_cost_micros: i64,
    pub model: Option<String>,
    pub system_prompt: String,
    pub user_template: String,
    pub enabled: i64,
    pub updated_at_ms: i64,
}

macro_rules! columns {
    () => {
        "tool_type, name, description, credits_cost_micros, model, system_prompt, user_template, enabled, updated_at_ms"
    };
}

/// Writes `row` unless its tool type is stored already; whether it was written.
pub async fn insert_missing(db: &Db, row: &ToolRow) -> Result<bool, sqlx::Error> {
    let done = write_pool!(db, p => sqlx::query(concat!(
        "INSERT INTO writing_tools (", columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (tool_type) DO NOTHING"))
        .bind(&row.tool_type)
        .bind(&row.name)
        .bind(&row.description)
        .bind(row.credits_cost_micros)
        .bind(&row.model)
        .bind(&row.system_prompt)
        .bind(&row.user_template)
        .bind(row.enabled)
        .bind(row.updated_at_ms)
        .execute(p)
        .await?
        .rows_affected());
    Ok(done == 1)
}

/// Every tool, in the order they were written (the seed's order).
pub async fn list(db: &Db) -> Result<Vec<ToolRow>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, ToolRow>(concat!(
        "SELECT ", columns!(), " FROM writing_tools"))
        .fetch_all(p)
        .await)
}

pub async fn get(db: &Db, tool_type: &str) -> Result<Option<ToolRow>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, ToolRow>(concat!(
        "SELECT ", columns!(), " FROM writing_tools WHERE tool_type = $1"))
        .bind(tool_type)
        .fetch_optional(p)
        .await)
}

/// What an admin may change about a tool (`None`: leave it; `model: Some(None)`: no default).
#[derive(Debug, Default)]
pub struct ToolChange {
    pub name: Option<String>,
    pub description: Option<String>,
    pub credits_cost_micros: Option<i64>,
    pub model: Option<Option<String>>,
    pub system_prompt: Option<String>,
    pub user_template: Option<String>,
    pub enabled: Option<bool>,
}

/// Applies `change` to the tool; the row as it is now (`None`: no such tool).
pub async fn update(
    db: &Db,
    tool_type: &str,
    change: &ToolChange,
) -> Result<Option<ToolRow>, sqlx::Error> {
    let (model_set, model) = match &change.model {
        Some(m) => (1_i64, m.clone()),
        None => (0, None),
    };
    write_pool!(db, p => sqlx::query_as::<_, ToolRow>(concat!(
        "UPDATE writing_tools SET
            name = COALESCE($2, name),
            description = COALESCE($3, description),
            credits_cost_micros = COALESCE($4, credits_cost_micros),
            model = CASE WHEN $5 = 1 THEN $6 ELSE model END,
            system_prompt = COALESCE($7, system_prompt),
            user_template = COALESCE($8, user_template),
            enabled = COALESCE($9, enabled),
            updated_at_ms = $10
         WHERE tool_type = $1
         RETURNING ", columns!()))
        .bind(tool_type)
        .bind(&change.name)
        .bind(&change.description)
        .bind(change.credits_cost_micros)
        .bind(model_set)
        .bind(model)
        .bind(&change.system_prompt)
        .bind(&change.user_template)
        .bind(change.enabled.map(i64::from))
        .bind(now_ms())
        .fetch_optional(p)
        .await)
}
