//! The published reference numbers (Thompson 2025, AtomicGuard TDD workflow: six tasks,
//! rmax = 3, n = 50, Ollama q4_k_m, T = 0.7), shown beside ours and never tested against them.

/// What the report says wherever these numbers appear.
pub const MARK: &str = "published (Thompson 2025) — not measured here";

/// One task's published numbers.
pub struct Published {
    /// Success % of Qwen2.5-Coder 14B, 7B, 3B.
    pub q14: u32,
    pub q7: u32,
    pub q3: u32,
    /// The hypothesised fine-tuned 7B success %.
    pub ft7: u32,
    /// Mean seconds per trial of the 7B.
    pub q7_secs: f64,
}

const TABLE: [(&str, Published); 6] = [
    (
        "stack",
        Published {
            q14: 88,
            q7: 94,
            q3: 68,
            ft7: 96,
            q7_secs: 6.9,
        },
    ),
    (
        "queue",
        Published {
            q14: 98,
            q7: 98,
            q3: 74,
            ft7: 100,
            q7_secs: 6.7,
        },
    ),
    (
        "calculator",
        Published {
            q14: 84,
            q7: 78,
            q3: 68,
            ft7: 82,
            q7_secs: 8.4,
        },
    ),
    (
        "lru_cache",
        Published {
            q14: 66,
            q7: 50,
            q3: 4,
            ft7: 58,
            q7_secs: 26.3,
        },
    ),
    (
        "template",
        Published {
            q14: 68,
            q7: 20,
            q3: 2,
            ft7: 32,
            q7_secs: 25.1,
        },
    ),
    (
        "password",
        Published {
            q14: 14,
            q7: 0,
            q3: 0,
            ft7: 6,
            q7_secs: 29.1,
        },
    ),
];

/// Overall success %: 14B, 7B, 3B; and the hypothesised fine-tuned 7B as text (`64 ± 3`).
pub const OVERALL: (u32, u32, u32, &str) = (70, 57, 36, "64 ± 3");

/// The published numbers of a task id, if it is one of the six.
pub fn lookup(task: &str) -> Option<&'static Published> {
    TABLE.iter().find(|(id, _)| *id == task).map(|(_, p)| p)
}
