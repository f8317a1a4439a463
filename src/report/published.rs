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

/// The published overall numbers over only `tasks` (those with published numbers): each task
/// had n = 50, so the pooled rate is the mean of the tasks' rates. Returns the 14B, 7B, 3B and
/// hypothesised fine-tuned 7B percentages and how many tasks they pool; `None` when no task
/// has published numbers. Over all six it is the paper's own overall row.
pub fn pooled<'a>(tasks: impl IntoIterator<Item = &'a str>) -> Option<([f64; 4], usize)> {
    let found: Vec<&Published> = tasks.into_iter().filter_map(lookup).collect();
    if found.is_empty() {
        return None;
    }
    let n = found.len() as f64;
    let mean = |f: fn(&Published) -> u32| found.iter().map(|p| f64::from(f(p))).sum::<f64>() / n;
    Some((
        [
            mean(|p| p.q14),
            mean(|p| p.q7),
            mean(|p| p.q3),
            mean(|p| p.ft7),
        ],
        found.len(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_over_all_six_is_the_papers_overall_row() {
        let ([q14, q7, q3, _], n) = pooled(TABLE.iter().map(|(id, _)| *id)).unwrap();
        assert_eq!(n, 6);
        assert_eq!((q14.round(), q7.round(), q3.round()), (70.0, 57.0, 36.0));
        assert_eq!(
            (OVERALL.0, OVERALL.1, OVERALL.2),
            (q14.round() as u32, q7.round() as u32, q3.round() as u32)
        );
    }

    #[test]
    fn pooled_over_a_subset_compares_like_with_like() {
        let ([q14, q7, q3, ft], n) = pooled(["stack", "queue", "calculator", "mine"]).unwrap();
        assert_eq!(n, 3);
        assert_eq!((q14, q7, q3), (90.0, 90.0, 70.0));
        assert!((ft - 92.666).abs() < 0.01);
        assert!(pooled(["mine"]).is_none());
    }
}
