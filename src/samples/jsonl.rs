//! The samples as chat JSONL, one [`ChatLine`] (`{"messages": [system, user, assistant]}`)
//! per line, whose system and user turns are byte for byte what the model saw at inference
//! (so training teaches the very prompt eval will use) and whose assistant turn is the
//! accepted reply. Split into train and validation deterministically from the seed, per task,
//! so every task with at least two samples has one in validation.

use super::Sample;
use crate::model::template::{Message, Role};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One JSONL line: a conversation to learn the last turn of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatLine {
    /// System, user, assistant.
    pub messages: Vec<Message>,
}

impl ChatLine {
    /// The conversation of a sample.
    pub fn of(s: &Sample) -> ChatLine {
        ChatLine {
            messages: vec![
                Message::new(Role::System, &s.system),
                Message::new(Role::User, &s.prompt),
                Message::new(Role::Assistant, &s.reply),
            ],
        }
    }
}

/// What `format` reports: lines written to each file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// Lines of `train.jsonl`.
    pub train: usize,
    /// Lines of `val.jsonl`.
    pub val: usize,
}

/// One JSONL line, newline included.
pub fn line(s: &Sample) -> String {
    let mut l = serde_json::to_string(&ChatLine::of(s)).expect("serialises");
    l.push('\n');
    l
}

/// Every line of a JSONL file, parsed; the error names the line.
pub fn parse(text: &str) -> Result<Vec<ChatLine>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// Which samples go to validation: per task, ordered by a seeded hash of the trial id,
/// `round(n × fraction)` of them, at least one where the task has two or more (training keeps
/// at least one). Returns (train, validation), each in the samples' order.
pub fn split(samples: &[Sample], fraction: f64, seed: u64) -> (Vec<&Sample>, Vec<&Sample>) {
    let mut by_task: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by_task.entry(&s.task).or_default().push(s);
    }
    let mut val_ids = std::collections::BTreeSet::new();
    for group in by_task.values() {
        let n = group.len();
        let want = ((n as f64) * fraction.clamp(0.0, 1.0)).round() as usize;
        let k = if n >= 2 { want.clamp(1, n - 1) } else { 0 };
        let mut order: Vec<(blake3::Hash, &crate::workflow::TrialId)> = group
            .iter()
            .map(|s| {
                let mut h = blake3::Hasher::new();
                h.update(&seed.to_le_bytes());
                h.update(s.trial.to_string().as_bytes());
                (h.finalize(), &s.trial)
            })
            .collect();
        order.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        val_ids.extend(order.into_iter().take(k).map(|(_, id)| id));
    }
    samples.iter().partition(|s| !val_ids.contains(&s.trial))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(task: &str, i: u32) -> Sample {
        Sample {
            trial: crate::workflow::TrialId::new(task, "base", i),
            task: task.into(),
            system: "You write Python.".into(),
            prompt: format!("Write tests for {task}\n\n  with \"quotes\" and ünïcode\t"),
            reply: "```python\ndef test_a():\n    assert True\n```".into(),
            tests_hash: String::new(),
        }
    }

    #[test]
    fn turns_are_byte_for_byte_and_the_split_is_seeded() {
        let s = sample("stack", 0);
        let v: serde_json::Value = serde_json::from_str(&line(&s)).unwrap();
        assert_eq!(v["messages"][0]["content"], s.system.as_str());
        assert_eq!(v["messages"][1]["content"], s.prompt.as_str());
        assert_eq!(v["messages"][2]["content"], s.reply.as_str());
        assert_eq!(v["messages"][2]["role"], "assistant");
        assert_eq!(parse(&line(&s)).unwrap(), [ChatLine::of(&s)]);

        let mut all: Vec<Sample> = (0..10).map(|i| sample("stack", i)).collect();
        all.extend((0..2).map(|i| sample("queue", i)));
        all.push(sample("lru", 0));
        let (train, val) = split(&all, 0.1, 7);
        assert_eq!(train.len() + val.len(), 13);
        let val_tasks: Vec<&str> = val.iter().map(|s| s.task.as_str()).collect();
        assert_eq!(val_tasks.iter().filter(|t| **t == "stack").count(), 1);
        assert_eq!(
            val_tasks.iter().filter(|t| **t == "queue").count(),
            1,
            "≥ 1 where there are two"
        );
        assert!(!val_tasks.contains(&"lru"), "a lone sample trains");
        let again = split(&all, 0.1, 7);
        assert_eq!(val, again.1, "same seed, same split");
        let other: Vec<_> = (0..20).map(|seed| split(&all, 0.1, seed).1).collect();
        assert!(other.iter().any(|v| *v != val), "the seed matters");
    }

    #[test]
    fn a_line_that_is_not_a_conversation_is_named() {
        let e = parse("{\"messages\": []}\n{\"msgs\": []}\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
    }
}
