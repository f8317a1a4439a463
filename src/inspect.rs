//! `pipe show`: an artifact with its inputs and provenance, found by target name,
//! `target/item`, action key or object hash (or a unique prefix of either).
//!
//! Glue over [`crate::store`] and [`crate::engine`], like the stages.

use crate::engine::{Context, Pipeline};
use crate::key::Hash;
use crate::store::{Store, StoreError};
use serde_json::{Value, json};

/// What `show` could not find.
#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    /// Nothing matches.
    #[error(
        "nothing named {0:?}: not a target, `target/item`, record key or object hash (try `pipe status`)"
    )]
    NotFound(String),
    /// A prefix matches several.
    #[error("{0:?} is ambiguous: it matches {1} entries; give more characters")]
    Ambiguous(String, usize),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Find `what` and describe it as JSON.
pub fn show(
    store: &Store,
    pipeline: &Pipeline,
    _cx: &Context<'_>,
    what: &str,
) -> Result<Value, ShowError> {
    let names = pipeline.names();
    if names.contains(&what) {
        let Some(r) = store.get_ref(what)? else {
            return Ok(json!({"target": what, "built": false}));
        };
        let m = store.manifest(&r.manifest)?;
        let common = store.get_json(&r.common).unwrap_or(Value::Null);
        let items: Vec<Value> = m
            .entries
            .iter()
            .map(
                |e| json!({"item": e.id, "key": e.key, "outputs": e.outputs, "summary": e.summary}),
            )
            .collect();
        let record = match m.entries.as_slice() {
            [only] => store
                .record(&only.key)?
                .map(|r| serde_json::to_value(r).expect("json")),
            _ => None,
        };
        return Ok(json!({
            "target": what, "built": true, "ref": r, "parameters": common,
            "items": items, "record": record,
        }));
    }
    if let Some((target, item)) = what.split_once('/')
        && names.contains(&target)
    {
        let r = store
            .get_ref(target)?
            .ok_or_else(|| ShowError::NotFound(what.into()))?;
        let m = store.manifest(&r.manifest)?;
        let e = m
            .entries
            .iter()
            .find(|e| e.id == item)
            .ok_or_else(|| ShowError::NotFound(what.into()))?;
        return record_json(store, &e.key);
    }
    let hex = what.to_ascii_lowercase();
    if hex.len() < 6 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ShowError::NotFound(what.into()));
    }
    let mut hits: Vec<(bool, Hash)> = Vec::new();
    for (is_record, dir) in [
        (true, crate::store::dirs::ACTIONS),
        (false, crate::store::dirs::OBJECTS),
    ] {
        for m in store.backend().list(&format!("{dir}/{}/", &hex[..2]))? {
            let name = m.key.rsplit('/').next().unwrap_or_default();
            let stem = name.strip_suffix(".json").unwrap_or(name);
            if stem.starts_with(&hex)
                && let Ok(h) = stem.parse()
            {
                hits.push((is_record, h));
            }
        }
    }
    match hits.as_slice() {
        [] => Err(ShowError::NotFound(what.into())),
        [(true, k)] => record_json(store, k),
        [(false, h)] => {
            let bytes = store.get(h)?;
            Ok(json!({"object": h, "size": bytes.len(), "content": content(&bytes)}))
        }
        many => Err(ShowError::Ambiguous(what.into(), many.len())),
    }
}

fn record_json(store: &Store, key: &Hash) -> Result<Value, ShowError> {
    let rec = store
        .record(key)?
        .ok_or_else(|| ShowError::NotFound(key.to_hex()))?;
    let mut outputs = serde_json::Map::new();
    for (name, id) in &rec.outputs {
        let v = store
            .get(id)
            .map(|b| content(&b))
            .unwrap_or_else(|e| json!(format!("<{e}>")));
        outputs.insert(name.clone(), json!({"object": id, "content": v}));
    }
    let common = store.get_json(&rec.common).unwrap_or(Value::Null);
    Ok(json!({
        "record": rec.key, "target": rec.stage, "item": rec.item,
        "producer": rec.producer, "started_ms": rec.started_ms, "finished_ms": rec.finished_ms,
        "duration_ms": rec.finished_ms.saturating_sub(rec.started_ms),
        "summary": rec.summary, "ingredients": rec.ingredients, "parameters": common,
        "outputs": outputs,
    }))
}

/// An object's bytes for display: JSON as JSON, text as (the first 4000 characters of) text.
fn content(bytes: &[u8]) -> Value {
    serde_json::from_slice::<Value>(bytes).unwrap_or_else(|_| match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.chars().take(4000).collect()),
        Err(_) => Value::String(format!("<{} bytes of binary>", bytes.len())),
    })
}
