//! Task specs: `tasks/<name>.json`, in the seed plan's shape plus the class and import line the
//! prompts need. Validated on load; their canonical JSON is what trial keys hash.

use super::ConfigError;
use crate::key::Hash;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How hard the paper rates a task.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Difficulty {
    /// Stack, Queue, Calculator.
    Easy,
    /// LRU cache.
    Medium,
    /// Template, Password.
    Hard,
}

/// One task file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Display name.
    pub name: String,
    /// The Python class the tests import.
    pub class_name: String,
    /// The import line the tests must use.
    pub import: String,
    /// Difficulty.
    pub difficulty: Difficulty,
    /// What to build.
    pub description: String,
    /// The class signature.
    pub signature: String,
    /// Interface and rules.
    pub requirements: Vec<String>,
    /// Edge cases the tests must cover.
    pub edge_cases: Vec<String>,
    /// How many tests the prompt asks for.
    pub expected_test_count: u32,
}

/// A loaded task.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// File stem (`stack`); the task's id in item ids and reports.
    pub id: String,
    /// The spec.
    pub spec: TaskSpec,
    /// The spec as a canonical JSON value (what keys and `explain` see).
    pub value: serde_json::Value,
    /// Hash of `value`.
    pub hash: Hash,
}

/// Load and validate one task file.
pub fn load(id: &str, file: &Path) -> Result<Task, ConfigError> {
    let err = |line_col, key, message| ConfigError {
        file: file.to_path_buf(),
        line_col,
        key,
        message,
    };
    let text =
        std::fs::read_to_string(file).map_err(|e| err(None, None, format!("cannot read: {e}")))?;
    let mut de = serde_json::Deserializer::from_str(&text);
    let spec: TaskSpec = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        // serde_json appends " at line L column C"; we print that as file:L:C instead.
        let msg = msg
            .rsplit_once(" at line ")
            .map_or(msg.clone(), |(m, _)| m.to_string());
        err(
            Some((inner.line(), inner.column())),
            (path != ".").then_some(path),
            msg,
        )
    })?;
    de.end().map_err(|e| {
        err(
            Some((e.line(), e.column())),
            None,
            "trailing characters".into(),
        )
    })?;
    let checks: [(&str, bool); 5] = [
        ("class_name", is_identifier(&spec.class_name)),
        (
            "import",
            spec.import.trim() == format!("from implementation import {}", spec.class_name),
        ),
        ("requirements", !spec.requirements.is_empty()),
        ("name", !spec.name.trim().is_empty()),
        ("expected_test_count", spec.expected_test_count > 0),
    ];
    for (key, ok) in checks {
        if !ok {
            let why = match key {
                "class_name" => "must be a Python identifier".to_string(),
                "import" => format!(
                    "must be `from implementation import {}` (the tests import from implementation.py)",
                    spec.class_name
                ),
                "expected_test_count" => "must be at least 1".into(),
                _ => "must not be empty".into(),
            };
            return Err(err(None, Some(key.to_string()), why));
        }
    }
    let value = serde_json::to_value(&spec).expect("spec serialises");
    let hash = Hash::of_value(&value);
    Ok(Task {
        id: id.to_string(),
        spec,
        value,
        hash,
    })
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}
