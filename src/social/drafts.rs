//! Drafts in seed 000's shape. A draft's items ("tweets") keep their HTML sanitised; on every
//! read each item gets its `plainText`, X's weighted `characterCount` and `isValid`, and the
//! draft gets `platformValidity` for each platform it targets (the platforms of its selected
//! accounts, else of its social set's, else all five), against that platform's limit (a
//! Mastodon account's instance limit).

use super::text::{self, Platform};
use crate::db::drafts::Draft;
use crate::db::social::Account;
use crate::error::ApiError;
use serde_json::{Map, Value, json};

/// Items a draft may hold (a thread).
pub const MAX_ITEMS: usize = 50;
/// The longest item accepted, in characters of HTML.
pub const MAX_ITEM_HTML: usize = 25_000;
/// Media one item may carry.
pub const MAX_MEDIA: usize = 4;
/// The longest title.
pub const MAX_TITLE: usize = 200;

/// A UUID-shaped random id (version 4 layout).
pub fn new_uuid() -> String {
    let n = rand::random::<u128>();
    let n = (n & !(0xF << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// One stored item: its id, sanitised HTML and media ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    pub content: String,
    pub media: Vec<String>,
}

impl Item {
    pub fn plain_text(&self) -> String {
        text::plain_text(&self.content)
    }
}

/// The items of a stored draft (a row written by [`items_json`]).
pub fn items(d: &Draft) -> Vec<Item> {
    let parsed: Vec<Value> = serde_json::from_str(&d.tweets).unwrap_or_default();
    parsed
        .iter()
        .map(|v| Item {
            id: v["id"].as_str().unwrap_or_default().to_owned(),
            content: v["content"].as_str().unwrap_or_default().to_owned(),
            media: v["media"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// Items as stored.
pub fn items_json(items: &[Item]) -> String {
    let v: Vec<Value> = items
        .iter()
        .map(|i| json!({"id": i.id, "content": i.content, "media": i.media}))
        .collect();
    Value::Array(v).to_string()
}

/// The account ids a stored draft selected.
pub fn selected(d: &Draft) -> Vec<String> {
    serde_json::from_str(&d.selected_account_ids).unwrap_or_default()
}

/// Reads a draft's `tweets` field: 1 to [`MAX_ITEMS`] objects with `content` (HTML) and
/// optional `media` (ids). Ids of items that had one are kept when `previous` holds them.
pub fn read_items(value: &Value, previous: &[Item]) -> Result<Vec<Item>, ApiError> {
    let bad = |m: String| ApiError::InvalidInput(m);
    let list = value
        .as_array()
        .ok_or_else(|| bad("tweets: must be an array of {\"content\"} objects".into()))?;
    if list.is_empty() || list.len() > MAX_ITEMS {
        return Err(bad(format!(
            "tweets: a draft holds 1 to {MAX_ITEMS} items, got {}",
            list.len()
        )));
    }
    list.iter()
        .enumerate()
        .map(|(k, v)| {
            let Some(obj) = v.as_object() else {
                return Err(bad(format!("tweets[{k}]: must be an object with content")));
            };
            let content = match obj.get("content") {
                Some(Value::String(s)) => s,
                None | Some(Value::Null) => {
                    return Err(bad(format!("tweets[{k}].content: required")));
                }
                Some(_) => return Err(bad(format!("tweets[{k}].content: must be a string"))),
            };
            let chars = content.chars().count();
            if chars > MAX_ITEM_HTML {
                return Err(bad(format!(
                    "tweets[{k}].content: {chars} characters, at most {MAX_ITEM_HTML} are accepted"
                )));
            }
            let media = match obj.get("media") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(m)) => {
                    if m.len() > MAX_MEDIA {
                        return Err(bad(format!(
                            "tweets[{k}].media: at most {MAX_MEDIA} media per item, got {}",
                            m.len()
                        )));
                    }
                    m.iter()
                        .map(|x| match x {
                            Value::String(s) if !s.is_empty() && s.len() <= 100 => Ok(s.clone()),
                            Value::Object(o) => o
                                .get("mediaId")
                                .or_else(|| o.get("id"))
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                                .ok_or_else(|| {
                                    bad(format!("tweets[{k}].media: each is a media id"))
                                }),
                            _ => Err(bad(format!("tweets[{k}].media: each is a media id"))),
                        })
                        .collect::<Result<Vec<_>, _>>()?
                }
                Some(_) => {
                    return Err(bad(format!(
                        "tweets[{k}].media: must be an array of media ids"
                    )));
                }
            };
            let id = obj
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| previous.iter().any(|p| p.id == *id))
                .map_or_else(new_uuid, str::to_owned);
            Ok(Item {
                id,
                content: text::sanitize_html(content),
                media,
            })
        })
        .collect()
}

/// Reads `title`: required, 1 to [`MAX_TITLE`] characters.
pub fn read_title(value: Option<&Value>) -> Result<String, ApiError> {
    match value {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            let t = s.trim();
            let n = t.chars().count();
            if n > MAX_TITLE {
                return Err(ApiError::InvalidInput(format!(
                    "title: {n} characters, at most {MAX_TITLE} are accepted"
                )));
            }
            Ok(t.to_owned())
        }
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(ApiError::InvalidInput("title: required".into()))
        }
        Some(_) => Err(ApiError::InvalidInput("title: must be a string".into())),
    }
}

/// Reads `status`: `draft` (the default), `scheduled` or `published`.
pub fn read_status(value: Option<&Value>) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if ["draft", "scheduled", "published"].contains(&s.as_str()) => {
            Ok(Some(s.clone()))
        }
        Some(other) => Err(ApiError::InvalidInput(format!(
            "status: must be \"draft\", \"scheduled\" or \"published\", got {other}"
        ))),
    }
}

/// Reads an RFC 3339 instant with its offset (`2026-01-15T10:00:00Z`); a time without one is
/// refused rather than guessed at. `Ok(None)` for null.
pub fn read_instant(field: &str, value: Option<&Value>) -> Result<Option<i64>, ApiError> {
    use time::format_description::well_known::Rfc3339;
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => time::OffsetDateTime::parse(s.trim(), &Rfc3339)
            .map(|t| Some(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)))
            .map_err(|_| {
                ApiError::InvalidInput(format!(
                    "{field}: expected an ISO 8601 time with its offset, like 2026-01-15T10:00:00Z, got {s:?}"
                ))
            }),
        Some(other) => Err(ApiError::InvalidInput(format!(
            "{field}: must be an ISO 8601 string, got {other}"
        ))),
    }
}

/// Reads a list of ids (`selectedAccountIds`).
pub fn read_ids(field: &str, value: Option<&Value>) -> Result<Option<Vec<String>>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(list)) if list.len() <= 100 => list
            .iter()
            .map(|v| {
                v.as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        ApiError::InvalidInput(format!("{field}: each must be an id string"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|mut ids| {
                ids.dedup();
                Some(ids)
            }),
        Some(_) => Err(ApiError::InvalidInput(format!(
            "{field}: must be an array of at most 100 ids"
        ))),
    }
}

/// The limit each targeted platform holds a draft to: the platforms of `targets` (the accounts
/// the draft goes to; all five at their defaults when there are none), a Mastodon account at
/// its instance's limit (the smallest, when several).
pub fn target_limits(targets: &[Account]) -> Vec<(Platform, usize)> {
    if targets.is_empty() {
        return Platform::ALL
            .iter()
            .map(|p| (*p, p.default_limit()))
            .collect();
    }
    let mut limits: Vec<(Platform, usize)> = Vec::new();
    for a in targets {
        let Some(p) = Platform::parse(&a.platform) else {
            continue;
        };
        let limit = a
            .char_limit
            .and_then(|l| usize::try_from(l).ok())
            .filter(|l| *l > 0)
            .unwrap_or(p.default_limit());
        match limits.iter_mut().find(|(q, _)| *q == p) {
            Some((_, l)) => *l = (*l).min(limit),
            None => limits.push((p, limit)),
        }
    }
    limits.sort_by_key(|(p, _)| Platform::ALL.iter().position(|q| q == p));
    limits
}

/// Whether every item fits every targeted platform.
pub fn all_valid(items: &[Item], limits: &[(Platform, usize)]) -> bool {
    items.iter().all(|i| {
        let t = i.plain_text();
        limits.iter().all(|(p, l)| {
            text::count(*p, &t, *l).valid || (t.trim().is_empty() && !i.media.is_empty())
        })
    })
}

/// A draft in seed 000's shape, with its counts against `limits`.
pub fn draft_json(d: &Draft, limits: &[(Platform, usize)], iso: impl Fn(i64) -> Value) -> Value {
    let items = items(d);
    let x_limit = Platform::X.default_limit();
    let tweets: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(k, i)| {
            let plain = i.plain_text();
            let c = text::count(Platform::X, &plain, x_limit);
            let with_media = plain.trim().is_empty() && !i.media.is_empty();
            json!({
                "id": i.id,
                "content": i.content,
                "plainText": plain,
                "media": i.media,
                "characterCount": c.count,
                "isValid": c.valid || with_media,
                "position": k,
            })
        })
        .collect();
    let mut validity = Map::new();
    for (p, limit) in limits {
        let counts: Vec<text::Count> = items
            .iter()
            .map(|i| text::count(*p, &i.plain_text(), *limit))
            .collect();
        let valid = items
            .iter()
            .zip(&counts)
            .all(|(i, c)| c.valid || (i.plain_text().trim().is_empty() && !i.media.is_empty()));
        validity.insert(
            p.as_str().to_owned(),
            json!({
                "characterCount": counts.iter().map(|c| c.count).max().unwrap_or(0),
                "limit": limit,
                "isValid": valid,
                "items": counts.iter().map(|c| json!({"characterCount": c.count, "isValid": c.valid})).collect::<Vec<_>>(),
            }),
        );
    }
    json!({
        "id": d.id,
        "title": d.title,
        "status": d.status,
        "scheduledFor": d.scheduled_for_ms.map(&iso),
        "socialSetId": d.social_set_id,
        "selectedAccountIds": selected(d),
        "templateId": d.template_id,
        "tweets": tweets,
        "platformValidity": validity,
        "isValid": all_valid(&items, limits),
        "createdAt": iso(d.created_at_ms),
        "updatedAt": iso(d.updated_at_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_have_the_version_4_layout() {
        let id = new_uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!("89ab".contains(&id[19..20]), "{id}");
        assert_ne!(new_uuid(), id);
    }

    #[test]
    fn items_are_read_sanitised_and_keep_known_ids() {
        let previous = vec![Item {
            id: "keep-me".into(),
            content: String::new(),
            media: vec![],
        }];
        let items = read_items(
            &json!([{"id": "keep-me", "content": "<p>hi<script>x</script></p>"},
                    {"id": "forged", "content": "two", "media": ["m1"]}]),
            &previous,
        )
        .expect("items");
        assert_eq!(items[0].id, "keep-me");
        assert_eq!(items[0].content, "<p>hi</p>");
        assert_ne!(items[1].id, "forged");
        assert_eq!(items[1].media, ["m1"]);
        for (bad, want) in [
            (json!([]), "1 to 50"),
            (json!([{"text": "x"}]), "tweets[0].content: required"),
            (json!([{"content": 5}]), "must be a string"),
            (
                json!([{"content": "x", "media": ["a", "b", "c", "d", "e"]}]),
                "at most 4",
            ),
            (json!("x"), "must be an array"),
        ] {
            let e = read_items(&bad, &[]).expect_err("refused");
            assert!(e.to_string().contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn instants_need_their_offset() {
        assert_eq!(
            read_instant("scheduledFor", Some(&json!("2026-01-15T10:00:00Z"))).expect("ok"),
            Some(1_768_471_200_000)
        );
        assert_eq!(
            read_instant("scheduledFor", Some(&json!("2026-01-15T18:00:00+08:00"))).expect("ok"),
            Some(1_768_471_200_000)
        );
        assert!(read_instant("scheduledFor", Some(&json!("2026-01-15T10:00:00"))).is_err());
    }
}
