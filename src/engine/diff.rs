//! What changed between a stage's last complete build and its current key: parameters
//! (`path: old → new`, looking inside `{"$obj": …}` ingredients when both sides are stored),
//! items added, removed or changed. Shared by `status` (one line) and `explain` (all of it).

use super::Context;
use super::plan::Evaluated;
use crate::key::Hash;
use crate::store::{Ref, Store, StoreError};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

const MAX_ITEM_DIFFS: usize = 5000;

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

/// Every change since `old`, one line each: parameters, then items grouped by what changed.
pub fn changes(
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
