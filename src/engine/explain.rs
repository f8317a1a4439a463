//! `pipe explain`: exactly which ingredients changed since a stage's last complete build,
//! old → new, looking inside `{"$obj": …}` ingredients (task specs) when both sides are stored.

use super::plan::{Evaluated, evaluate};
use super::{Context, Pipeline};
use crate::key::Hash;
use crate::store::{Ref, Store, StoreError};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// Why one stage would rebuild.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// Target.
    pub target: String,
    /// `up to date`, `never built`, `changed` or `waiting`.
    pub verdict: String,
    /// The changes, one per line: `path: old → new`, with the items they touch.
    pub changes: Vec<String>,
}

const MAX_ITEM_DIFFS: usize = 5000;

/// Explain `target` and everything it needs.
pub fn explain(
    store: &Store,
    pipeline: &Pipeline,
    cx: &Context<'_>,
    target: &str,
) -> Result<Vec<Explanation>, ExplainError> {
    let closure = pipeline.closure(&[target.to_string()])?;
    let mut known: BTreeMap<String, Hash> = BTreeMap::new();
    let mut out = Vec::new();
    for i in closure {
        let stage = pipeline.stages()[i].as_ref();
        let name = stage.name().to_string();
        if let Some(dep) = stage.deps().iter().find(|d| !known.contains_key(**d)) {
            out.push(Explanation {
                target: name,
                verdict: "waiting".into(),
                changes: vec![format!(
                    "input `{dep}` must be rebuilt first; this stage reruns only if its output changes"
                )],
            });
            continue;
        }
        let ev = evaluate(stage, cx, &known);
        let old = store.get_ref(&name)?;
        match old {
            Some(r) if r.stage_key == ev.stage_key => {
                known.insert(name.clone(), r.output);
                out.push(Explanation {
                    target: name,
                    verdict: "up to date".into(),
                    changes: vec![],
                });
            }
            Some(r) => out.push(Explanation {
                target: name,
                verdict: "changed".into(),
                changes: changes(store, cx, &r, &ev)?,
            }),
            None => out.push(Explanation {
                target: name,
                verdict: "never built".into(),
                changes: vec![],
            }),
        }
    }
    Ok(out)
}

/// Errors of `explain`.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// Unknown target.
    #[error(transparent)]
    Pipeline(#[from] super::PipelineError),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One line for `status`.
pub fn brief_reason(store: &Store, cx: &Context<'_>, old: &Ref, ev: &Evaluated) -> String {
    match changes(store, cx, old, ev) {
        Ok(c) if c.is_empty() => "inputs changed".into(),
        Ok(c) => {
            let first = c[0].chars().take(100).collect::<String>();
            if c.len() > 1 {
                format!("{first} (+{} more; see `pipe explain`)", c.len() - 1)
            } else {
                first
            }
        }
        Err(e) => format!("inputs changed ({e})"),
    }
}

fn changes(
    store: &Store,
    cx: &Context<'_>,
    old: &Ref,
    ev: &Evaluated,
) -> Result<Vec<String>, StoreError> {
    let resolve = |h: &Hash| cx.pending(h).or_else(|| store.get_json(h).ok());
    let mut lines = Vec::new();
    if old.common != ev.common_hash {
        match store.get_json(&old.common) {
            Ok(prev) => diff(&resolve, &prev, &ev.common, "", &mut lines),
            Err(_) => {
                lines.push("stage parameters changed (old ones no longer in the store)".into())
            }
        }
    }
    let Ok(m) = store.manifest(&old.manifest) else {
        lines.push("previous build's manifest is gone; every item is compared by key".into());
        return Ok(lines);
    };
    let old_keys: HashMap<&str, Hash> = m.entries.iter().map(|e| (e.id.as_str(), e.key)).collect();
    let mut groups: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut added = Vec::new();
    let mut looked = 0;
    for (it, key) in ev.items.iter().zip(&ev.keys) {
        match old_keys.get(it.id.as_str()) {
            None => added.push(it.id.as_str()),
            Some(k) if k == key => {}
            Some(k) => {
                if looked >= MAX_ITEM_DIFFS {
                    groups
                        .entry("(not compared: too many)".into())
                        .or_default()
                        .push(&it.id);
                    continue;
                }
                looked += 1;
                let mut d = Vec::new();
                match store.record(k) {
                    Ok(Some(rec)) => diff(
                        &resolve,
                        &rec.ingredients,
                        &it.ingredients(),
                        "item",
                        &mut d,
                    ),
                    _ => d.push("(previous record gone)".into()),
                }
                if !d.is_empty() {
                    groups.entry(d.join("; ")).or_default().push(&it.id);
                }
            }
        }
    }
    let new_ids: std::collections::HashSet<&str> = ev.items.iter().map(|i| i.id.as_str()).collect();
    let removed: Vec<&str> = m
        .entries
        .iter()
        .map(|e| e.id.as_str())
        .filter(|id| !new_ids.contains(id))
        .collect();
    for (what, ids) in groups {
        lines.push(format!("{} ({}): {what}", count(ids.len()), sample(&ids)));
    }
    if !added.is_empty() {
        lines.push(format!("{} added ({})", count(added.len()), sample(&added)));
    }
    if !removed.is_empty() {
        lines.push(format!(
            "{} removed ({})",
            count(removed.len()),
            sample(&removed)
        ));
    }
    Ok(lines)
}

fn count(n: usize) -> String {
    if n == 1 {
        "1 item".into()
    } else {
        format!("{n} items")
    }
}

fn sample(ids: &[&str]) -> String {
    let mut s = ids.iter().take(3).copied().collect::<Vec<_>>().join(", ");
    if ids.len() > 3 {
        s.push_str(", …");
    }
    s
}

fn show(v: &Value) -> String {
    let s = crate::key::canonical(v);
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(79).collect::<String>())
    } else {
        s
    }
}

fn obj_ref(v: &Value) -> Option<Hash> {
    let m = v.as_object()?;
    if m.len() != 1 {
        return None;
    }
    m.get("$obj")?.as_str()?.parse().ok()
}

/// Looks an object up by hash: the context's pending blobs first, then the store.
pub type Resolve<'a> = dyn Fn(&Hash) -> Option<Value> + 'a;

/// Append `path: old → new` lines for every leaf that differs.
pub fn diff(resolve: &Resolve<'_>, old: &Value, new: &Value, path: &str, out: &mut Vec<String>) {
    if old == new {
        return;
    }
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    if let (Some(a), Some(b)) = (obj_ref(old), obj_ref(new)) {
        if let (Some(va), Some(vb)) = (resolve(&a), resolve(&b)) {
            return diff(resolve, &va, &vb, path, out);
        }
        out.push(format!("{path}: object {} → {}", a.short(), b.short()));
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                match b.get(k) {
                    Some(vb) => diff(resolve, va, vb, &join(k), out),
                    None => out.push(format!("{}: removed (was {})", join(k), show(va))),
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    out.push(format!("{}: added = {}", join(k), show(vb)));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                diff(resolve, va, vb, &format!("{path}[{i}]"), out);
            }
        }
        _ => out.push(format!("{path}: {} → {}", show(old), show(new))),
    }
}
