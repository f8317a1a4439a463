//! Every number the report shows, computed once from the input: per task × arm cells, pooled
//! per-arm cells, comparisons, power, and the "cannot conclude" statements.

use super::fmt::{pct, pts, pval};
use super::{Cause, ReportInput, TrialRow};
use crate::stats;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Wilson interval confidence.
pub const CONFIDENCE: f64 = 0.95;
/// The largest sample size per arm the power search considers: beyond it a row says "–".
pub const MAX_POWER_N: u64 = 5000;

/// Significance level of every test and power computation.
pub const ALPHA: f64 = 0.05;
/// Power of the sample-size computations.
pub const POWER: f64 = 0.8;
/// The experiment's hypothesised gain of the fine-tuned arm (points / 100).
pub const HYPOTHESISED_GAIN: f64 = 0.05;
/// The retry histograms' last column: R ≥ this is counted there.
pub const R_CAP: usize = 32;
/// Below this many trials per cell, the report calls CIs wide.
const SMALL_N: u64 = 10;

/// A task row: listed in the config, or found only in trials.
pub struct Task {
    pub id: String,
    pub name: String,
    pub difficulty: String,
}

/// An arm column.
pub struct Arm {
    pub name: String,
    pub role: String,
    pub model: String,
    pub rmax: u32,
}

/// Quartiles and extremes of durations, in seconds.
#[derive(Clone, Copy)]
pub struct Durations {
    pub q25: f64,
    pub median: f64,
    pub q75: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

/// The aggregate of a set of trials (one task × arm, or one arm pooled over tasks).
pub struct Cell<'a> {
    /// Sorted by (task order, index, id).
    pub trials: Vec<&'a TrialRow>,
    pub n: u64,
    pub successes: u64,
    pub rate: Option<f64>,
    pub ci: (f64, f64),
    /// Passed trials by R of the tests step (index = R; the last index, [`R_CAP`], counts
    /// R ≥ R_CAP).
    pub r_tests: Vec<u64>,
    /// Passed trials by R of the implementation step.
    pub r_impl: Vec<u64>,
    pub mean_r_tests: Option<f64>,
    pub mean_r_impl: Option<f64>,
    /// Mean of R_tests + R_impl over passed trials.
    pub mean_retries: Option<f64>,
    pub strength: Option<f64>,
    pub strength_n: u64,
    pub durations: Option<Durations>,
    pub mean_prompt: Option<f64>,
    pub mean_completion: Option<f64>,
    /// Failed trials by (failed step, cause); a cause of `None` when unknown.
    pub causes: BTreeMap<(String, Option<Cause>), u64>,
    /// Requests made (attempts over both steps) and those cut off by `max_tokens`.
    pub attempts: u64,
    pub truncated: u64,
}

fn mean(sum: f64, n: u64) -> Option<f64> {
    (n > 0).then(|| sum / n as f64)
}

/// R of a passed step: the recorded retries, else attempts − 1.
pub fn r_tests(t: &TrialRow) -> u32 {
    t.retries_tests
        .unwrap_or_else(|| t.tests_attempts.saturating_sub(1))
}
/// R of a passed implementation step: the recorded retries, else attempts − 1.
pub fn r_impl(t: &TrialRow) -> u32 {
    t.retries_impl
        .unwrap_or_else(|| t.impl_attempts.saturating_sub(1))
}

impl<'a> Cell<'a> {
    fn new(trials: Vec<&'a TrialRow>, rmax: u32) -> Self {
        let n = trials.len() as u64;
        let successes = trials.iter().filter(|t| t.passed).count() as u64;
        let cols = (rmax as usize).min(R_CAP) + 1;
        let mut r_t = vec![0u64; cols];
        let mut r_i = vec![0u64; cols];
        let (mut sum_t, mut sum_i) = (0u64, 0u64);
        let (mut s_sum, mut s_n) = (0.0, 0u64);
        let (mut p_sum, mut c_sum) = (0u64, 0u64);
        let mut secs: Vec<f64> = Vec::with_capacity(trials.len());
        let mut causes: BTreeMap<(String, Option<Cause>), u64> = BTreeMap::new();
        let (mut attempts, mut truncated) = (0u64, 0u64);
        for t in &trials {
            attempts += u64::from(t.tests_attempts) + u64::from(t.impl_attempts);
            truncated += u64::from(t.truncated);
            if !t.passed {
                let step = t.failed_step.clone().unwrap_or_else(|| "?".into());
                *causes.entry((step, t.cause)).or_default() += 1;
            }
            if t.passed {
                let (rt, ri) = (r_tests(t), r_impl(t));
                for (v, r) in [(&mut r_t, rt), (&mut r_i, ri)] {
                    // R > rmax means inconsistent input; bounded, so it cannot blow memory.
                    let k = (r as usize).min(R_CAP);
                    if v.len() <= k {
                        v.resize(k + 1, 0);
                    }
                    v[k] += 1;
                }
                sum_t = sum_t.saturating_add(rt as u64);
                sum_i = sum_i.saturating_add(ri as u64);
                if let Some(s) = t.test_strength.filter(|s| s.is_finite()) {
                    s_sum += s;
                    s_n += 1;
                }
            }
            p_sum = p_sum.saturating_add(t.prompt_tokens);
            c_sum = c_sum.saturating_add(t.completion_tokens);
            secs.push(t.duration_ms as f64 / 1000.0);
        }
        let durations = stats::quartiles(&secs).map(|(q25, median, q75)| Durations {
            q25,
            median,
            q75,
            min: secs.iter().copied().fold(f64::INFINITY, f64::min),
            max: secs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            mean: secs.iter().sum::<f64>() / secs.len() as f64,
        });
        Cell {
            n,
            successes,
            rate: (n > 0).then(|| successes as f64 / n as f64),
            ci: stats::wilson(successes, n, CONFIDENCE),
            r_tests: r_t,
            r_impl: r_i,
            mean_r_tests: mean(sum_t as f64, successes),
            mean_r_impl: mean(sum_i as f64, successes),
            mean_retries: mean((sum_t + sum_i) as f64, successes),
            strength: mean(s_sum, s_n),
            strength_n: s_n,
            durations,
            mean_prompt: mean(p_sum as f64, n),
            mean_completion: mean(c_sum as f64, n),
            causes,
            attempts,
            truncated,
            trials,
        }
    }

    /// Failed trials whose failing step was `step`.
    pub fn failed_at(&self, step: &str) -> u64 {
        self.causes
            .iter()
            .filter(|((s, _), _)| s == step)
            .map(|(_, k)| k)
            .sum()
    }

    /// Failed trials whose cause was `cause` (`None`: unknown), at whatever step.
    pub fn failed_with(&self, cause: Option<Cause>) -> u64 {
        self.causes
            .iter()
            .filter(|((_, c), _)| *c == cause)
            .map(|(_, k)| k)
            .sum()
    }

    /// Half-width of the Wilson interval, in points.
    pub fn half_width(&self) -> f64 {
        (self.ci.1 - self.ci.0) * 50.0
    }
}

/// One 2×2 test between two cells (earlier arm vs later arm).
pub struct Test {
    /// (successes, n) of the earlier arm.
    pub a: (u64, u64),
    /// (successes, n) of the later arm.
    pub b: (u64, u64),
    /// later − earlier, in points; `None` when either cell is empty.
    pub delta: Option<f64>,
    pub p: Option<f64>,
    pub h: Option<f64>,
    /// Trials per arm for 80% power at α = 0.05 to detect this Δ.
    pub n_needed: Option<u64>,
    /// Holm-adjusted p over the report's exploratory tests; `None` for the primary test and
    /// for a test without p.
    pub p_holm: Option<f64>,
}

impl Test {
    fn new(x: &Cell, y: &Cell) -> Self {
        let (a, b) = ((x.successes, x.n), (y.successes, y.n));
        match (x.rate, y.rate) {
            (Some(p1), Some(p2)) => Test {
                a,
                b,
                delta: Some((p2 - p1) * 100.0),
                p: Some(stats::fisher_exact_two_sided(
                    a.0,
                    a.1 - a.0,
                    b.0,
                    b.1 - b.0,
                )),
                h: Some(stats::cohens_h(p1, p2)),
                n_needed: stats::n_per_arm_for_fisher_power(p1, p2, ALPHA, POWER, MAX_POWER_N),
                p_holm: None,
            },
            _ => Test {
                a,
                b,
                delta: None,
                p: None,
                h: None,
                n_needed: None,
                p_holm: None,
            },
        }
    }
}

/// The hypothesised gain over an arm's observed overall rate.
pub struct Plus5 {
    pub arm: usize,
    pub from: f64,
    pub to: f64,
    pub n_needed: Option<u64>,
}

fn plus5(arm: usize, cell: &Cell) -> Option<Plus5> {
    let from = cell.rate?;
    let to = (from + HYPOTHESISED_GAIN).min(1.0);
    Some(Plus5 {
        arm,
        from,
        to,
        n_needed: stats::n_per_arm_for_fisher_power(from, to, ALPHA, POWER, MAX_POWER_N),
    })
}

/// Arm `earlier` against arm `later`, per task and pooled.
pub struct Comparison {
    pub earlier: usize,
    pub later: usize,
    /// Per task, in task order.
    pub tasks: Vec<Test>,
    pub overall: Test,
    pub plus5: Option<Plus5>,
    /// The overall comparison stratified by task.
    pub cmh: Option<stats::Cmh>,
    /// The experiment's primary comparison: the first baseline arm against the first
    /// fine-tuned arm, overall. Everything else is exploratory.
    pub primary: bool,
}

/// Everything the renderers need.
pub struct Analysis<'a> {
    pub input: &'a ReportInput,
    pub tasks: Vec<Task>,
    pub arms: Vec<Arm>,
    /// Tasks found only in trials (ids), for the statements.
    pub extra_tasks: Vec<String>,
    /// Arms found only in trials (names).
    pub extra_arms: Vec<String>,
    /// `cells[task][arm]`.
    pub cells: Vec<Vec<Cell<'a>>>,
    /// Per arm, all tasks pooled.
    pub overall: Vec<Cell<'a>>,
    pub comparisons: Vec<Comparison>,
    /// +5 points over each baseline arm's overall rate (the first arm when none is a
    /// baseline), for the power section even without a comparison.
    pub baseline_plus5: Vec<Plus5>,
    /// Largest R column any arm needs.
    pub r_columns: usize,
    pub statements: Vec<String>,
}

/// The pairs to compare: every (baseline, fine-tuned) pair, then, with several baseline arms,
/// every other pair of arms in order. Always (earlier, later) by arm order.
fn pairs(arms: &[Arm]) -> Vec<(usize, usize)> {
    let role = |i: usize, r: &str| arms[i].role == r;
    let mut out = Vec::new();
    for i in 0..arms.len() {
        for j in 0..arms.len() {
            if role(i, "baseline") && role(j, "finetuned") {
                out.push((i.min(j), i.max(j)));
            }
        }
    }
    let known = |i: usize| role(i, "baseline") || role(i, "finetuned");
    if arms.iter().filter(|a| a.role == "baseline").count() > 1 {
        for i in 0..arms.len() {
            for j in i + 1..arms.len() {
                if known(i) && known(j) && !out.contains(&(i, j)) {
                    out.push((i, j));
                }
            }
        }
    }
    out
}

/// Holm over every test but the primary one (per-task tests of every comparison, and the
/// overall tests of the exploratory comparisons).
fn holm_adjust(comparisons: &mut [Comparison]) {
    let mut family: Vec<&mut Test> = Vec::new();
    for c in comparisons.iter_mut() {
        let primary = c.primary;
        family.extend(c.tasks.iter_mut().filter(|t| t.p.is_some()));
        if !primary && c.overall.p.is_some() {
            family.push(&mut c.overall);
        }
    }
    let ps: Vec<f64> = family.iter().map(|t| t.p.unwrap_or(1.0)).collect();
    for (t, adj) in family.into_iter().zip(stats::holm(&ps)) {
        t.p_holm = Some(adj);
    }
}

/// Above this many trials in either group the "smallest detectable Δ" statement is skipped:
/// its cost grows as n² (each Fisher test is O(n)), and with that many trials the floor is a
/// few points at extreme rates — the power table says more.
const MDD_MAX_N: u64 = 300;

/// "p < α" for the smallest-detectable-Δ search, a hair below α: a table whose exact p is
/// α itself (2/14 vs 2/2 has p = 6/120 = 0.05) must not count, whichever way floating point
/// rounds it (the table and its mirror image round differently).
const SIG: f64 = ALPHA * (1.0 - 1e-9);

/// The smallest |Δ| (points) that can reach p < α with these group sizes, whatever the rates;
/// `None` when no table of this size can. Exact: for each count of the first group, the
/// nearest significant count of the second in both directions (scanning outwards, stopping
/// once no improvement is possible). Only counts up to n1/2 are tried: the table with
/// successes and failures swapped has the same p and the same |Δ|.
pub fn min_detectable(n1: u64, n2: u64) -> Option<f64> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let sig = |s1: u64, s2: u64| stats::fisher_exact_two_sided(s1, n1 - s1, s2, n2 - s2) < SIG;
    let mut best = f64::INFINITY;
    for s1 in 0..=n1 / 2 {
        let r1 = s1 as f64 / n1 as f64;
        let mid = r1 * n2 as f64;
        for s2 in (mid.ceil() as u64).min(n2)..=n2 {
            let d = s2 as f64 / n2 as f64 - r1;
            if d >= best {
                break;
            }
            if d > 0.0 && sig(s1, s2) {
                best = d;
                break;
            }
        }
        for s2 in (0..=(mid.floor() as u64).min(n2)).rev() {
            let d = r1 - s2 as f64 / n2 as f64;
            if d >= best {
                break;
            }
            if d > 0.0 && sig(s1, s2) {
                best = d;
                break;
            }
        }
    }
    best.is_finite().then_some(best * 100.0)
}

/// Brute force over all tables: used by tests to check [`min_detectable`].
#[cfg(test)]
pub fn min_detectable_brute(n1: u64, n2: u64) -> Option<f64> {
    let mut best: Option<f64> = None;
    for s1 in 0..=n1 {
        for s2 in 0..=n2 {
            if stats::fisher_exact_two_sided(s1, n1 - s1, s2, n2 - s2) < SIG {
                let (r1, r2) = (s1 as f64 / n1 as f64, s2 as f64 / n2 as f64);
                let d = if r2 > r1 { r2 - r1 } else { r1 - r2 } * 100.0;
                best = Some(best.map_or(d, |b: f64| b.min(d)));
            }
        }
    }
    best
}

impl<'a> Analysis<'a> {
    pub fn new(input: &'a ReportInput) -> Self {
        // Rows and columns: listed ones, then unlisted ones found in trials (sorted).
        let mut tasks: Vec<Task> = Vec::new();
        let mut task_ix: HashMap<&str, usize> = HashMap::new();
        for t in &input.tasks {
            if !task_ix.contains_key(t.id.as_str()) {
                task_ix.insert(&t.id, tasks.len());
                tasks.push(Task {
                    id: t.id.clone(),
                    name: t.name.clone(),
                    difficulty: t.difficulty.clone(),
                });
            }
        }
        let mut arms: Vec<Arm> = Vec::new();
        let mut arm_ix: HashMap<&str, usize> = HashMap::new();
        for a in &input.arms {
            if !arm_ix.contains_key(a.name.as_str()) {
                arm_ix.insert(&a.name, arms.len());
                arms.push(Arm {
                    name: a.name.clone(),
                    role: a.role.clone(),
                    model: a.model.clone(),
                    rmax: a.rmax,
                });
            }
        }
        let extra_tasks: BTreeSet<&str> = input
            .trials
            .iter()
            .map(|t| t.task.as_str())
            .filter(|t| !task_ix.contains_key(t))
            .collect();
        for t in &extra_tasks {
            task_ix.insert(t, tasks.len());
            tasks.push(Task {
                id: t.to_string(),
                name: t.to_string(),
                difficulty: String::new(),
            });
        }
        let extra_arms: BTreeSet<&str> = input
            .trials
            .iter()
            .map(|t| t.arm.as_str())
            .filter(|a| !arm_ix.contains_key(a))
            .collect();
        for a in &extra_arms {
            arm_ix.insert(a, arms.len());
            arms.push(Arm {
                name: a.to_string(),
                role: "unknown".into(),
                model: String::new(),
                rmax: 0,
            });
        }

        // Group, then sort each group so input order never shows.
        let mut groups: Vec<Vec<Vec<&TrialRow>>> = vec![vec![Vec::new(); arms.len()]; tasks.len()];
        for t in &input.trials {
            groups[task_ix[t.task.as_str()]][arm_ix[t.arm.as_str()]].push(t);
        }
        let key = |t: &&TrialRow| (t.index, t.id.clone(), t.stage.clone());
        let mut cells: Vec<Vec<Cell>> = Vec::with_capacity(tasks.len());
        let mut pooled: Vec<Vec<&TrialRow>> = vec![Vec::new(); arms.len()];
        for row in groups {
            let mut out = Vec::with_capacity(arms.len());
            for (ai, mut g) in row.into_iter().enumerate() {
                g.sort_by_cached_key(key);
                pooled[ai].extend(g.iter().copied());
                out.push(Cell::new(g, arms[ai].rmax));
            }
            cells.push(out);
        }
        let overall: Vec<Cell> = pooled
            .into_iter()
            .enumerate()
            .map(|(ai, g)| Cell::new(g, arms[ai].rmax))
            .collect();

        let mut comparisons: Vec<Comparison> = pairs(&arms)
            .into_iter()
            .map(|(i, j)| Comparison {
                earlier: i,
                later: j,
                tasks: cells
                    .iter()
                    .map(|row| Test::new(&row[i], &row[j]))
                    .collect(),
                overall: Test::new(&overall[i], &overall[j]),
                plus5: plus5(i, &overall[i]),
                cmh: stats::cochran_mantel_haenszel(
                    &cells
                        .iter()
                        .map(|row| {
                            let (x, y) = (&row[i], &row[j]);
                            (
                                x.successes,
                                x.n - x.successes,
                                y.successes,
                                y.n - y.successes,
                            )
                        })
                        .collect::<Vec<_>>(),
                ),
                primary: false,
            })
            .collect();
        if let Some(c) = comparisons
            .iter_mut()
            .find(|c| arms[c.earlier].role == "baseline" && arms[c.later].role == "finetuned")
        {
            c.primary = true;
        }
        holm_adjust(&mut comparisons);

        let mut baseline_plus5: Vec<Plus5> = arms
            .iter()
            .enumerate()
            .filter(|(_, a)| a.role == "baseline")
            .filter_map(|(i, _)| plus5(i, &overall[i]))
            .collect();
        if baseline_plus5.is_empty()
            && !arms.iter().any(|a| a.role == "baseline")
            && let Some(c) = overall.first()
            && let Some(p) = plus5(0, c)
        {
            baseline_plus5.push(p);
        }

        let r_columns = cells
            .iter()
            .flatten()
            .chain(overall.iter())
            .map(|c| c.r_tests.len().max(c.r_impl.len()))
            .max()
            .unwrap_or(1)
            .max(
                arms.iter()
                    .map(|a| (a.rmax as usize).min(R_CAP) + 1)
                    .max()
                    .unwrap_or(1),
            );

        let mut a = Analysis {
            input,
            tasks,
            arms,
            extra_tasks: extra_tasks.iter().map(|s| s.to_string()).collect(),
            extra_arms: extra_arms.iter().map(|s| s.to_string()).collect(),
            cells,
            overall,
            comparisons,
            baseline_plus5,
            r_columns,
            statements: Vec::new(),
        };
        a.statements = a.statements();
        a
    }

    /// Training samples per listed or extra task, when extract ran: (trials, kept).
    pub fn samples(&self) -> Option<Vec<(u32, u32)>> {
        let ex = self.input.extract.as_ref()?;
        Some(
            self.tasks
                .iter()
                .map(|t| ex.get(&t.id).map_or((0, 0), |c| (c.trials, c.kept)))
                .collect(),
        )
    }

    /// The label of a comparison: `base → finetuned`.
    pub fn pair_label(&self, c: &Comparison) -> String {
        format!(
            "{} → {}",
            self.arms[c.earlier].name, self.arms[c.later].name
        )
    }

    /// Number of Fisher tests the report shows.
    pub fn test_count(&self) -> usize {
        self.comparisons
            .iter()
            .map(|c| {
                c.tasks
                    .iter()
                    .chain([&c.overall])
                    .filter(|t| t.p.is_some())
                    .count()
            })
            .sum()
    }

    fn statements(&self) -> Vec<String> {
        let mut out = Vec::new();
        let trials = self.input.trials.len();
        if trials == 0 {
            out.push(
                "No trials yet: nothing can be concluded; every rate below is empty, not zero."
                    .into(),
            );
        }
        if !self.extra_tasks.is_empty() {
            out.push(format!(
                "Trials name tasks not in the config ({}): they are reported as extra rows and pooled into \"overall\".",
                self.extra_tasks.join(", ")
            ));
        }
        if !self.extra_arms.is_empty() {
            out.push(format!(
                "Trials name arms not in the config ({}): they are reported with role \"unknown\" and never compared.",
                self.extra_arms.join(", ")
            ));
        }
        if self.comparisons.is_empty() {
            if self.arms.len() <= 1 {
                let which = self
                    .arms
                    .first()
                    .map_or("none".to_string(), |a| a.name.clone());
                out.push(format!(
                    "Only one arm ({which}): no comparison; nothing here says whether fine-tuning helps."
                ));
            } else {
                out.push(
                    "No baseline arm paired with a fine-tuned arm: no comparison; nothing here says whether fine-tuning helps."
                        .into(),
                );
            }
        }
        // Arms without any trial, then other empty cells.
        let idle: Vec<&str> = self
            .arms
            .iter()
            .zip(&self.overall)
            .filter(|(_, c)| c.n == 0)
            .map(|(a, _)| a.name.as_str())
            .collect();
        if trials > 0 && !idle.is_empty() {
            out.push(format!(
                "No trials yet for arm{} {}: every rate and comparison involving {} is empty, not zero.",
                if idle.len() == 1 { "" } else { "s" },
                idle.join(", "),
                if idle.len() == 1 { "it" } else { "them" }
            ));
        }
        let empty: Vec<String> = self
            .tasks
            .iter()
            .enumerate()
            .flat_map(|(ti, t)| {
                self.arms
                    .iter()
                    .enumerate()
                    .filter(move |&(ai, _)| self.cells[ti][ai].n == 0 && self.overall[ai].n > 0)
                    .map(move |(_, a)| format!("{} × {}", t.id, a.name))
            })
            .collect();
        if trials > 0 && !empty.is_empty() {
            out.push(format!(
                "No trials for {}: {} unknown, not zero.",
                list_some(&empty, 6),
                if empty.len() == 1 {
                    "its rate is"
                } else {
                    "their rates are"
                }
            ));
        }
        // Small cells: wide CIs.
        let small: Vec<&Cell> = self
            .cells
            .iter()
            .flatten()
            .filter(|c| c.n > 0 && c.n < SMALL_N)
            .collect();
        if !small.is_empty() {
            let ns: BTreeSet<u64> = small.iter().map(|c| c.n).collect();
            let widest = small.iter().map(|c| c.half_width()).fold(0.0, f64::max);
            let narrowest = small
                .iter()
                .map(|c| c.half_width())
                .fold(f64::INFINITY, f64::min);
            let range = if widest - narrowest < 0.5 {
                format!("±{widest:.0}")
            } else {
                format!("±{narrowest:.0} to ±{widest:.0}")
            };
            out.push(format!(
                "Fewer than {SMALL_N} trials per task and arm (n = {}): the 95% CIs are wide ({range} points).",
                ns.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "),
            ));
        }
        // Per comparison.
        let mut mdd_cache: HashMap<(u64, u64), Option<f64>> = HashMap::new();
        let mut mdd = |n1: u64, n2: u64| {
            *mdd_cache
                .entry((n1, n2))
                .or_insert_with(|| min_detectable(n1, n2))
        };
        for c in &self.comparisons {
            let label = self.pair_label(c);
            // Smallest detectable Δ per task group size.
            let mut by_n: BTreeMap<(u64, u64), Vec<&str>> = BTreeMap::new();
            for (ti, t) in c.tasks.iter().enumerate() {
                if t.a.1 > 0 && t.b.1 > 0 {
                    by_n.entry((t.a.1, t.b.1))
                        .or_default()
                        .push(&self.tasks[ti].id);
                }
            }
            let all_tasks = by_n.len() == 1
                && by_n
                    .values()
                    .next()
                    .is_some_and(|v| v.len() == self.tasks.len());
            for ((n1, n2), ids) in by_n.iter().filter(|((x, y), _)| (*x).max(*y) <= MDD_MAX_N) {
                let who = if all_tasks {
                    "per task".to_string()
                } else {
                    format!(
                        "task{} {}",
                        if ids.len() == 1 { "" } else { "s" },
                        ids.join(", ")
                    )
                };
                out.push(detectable_sentence(&label, &who, *n1, *n2, mdd(*n1, *n2)));
            }
            let o = &c.overall;
            if o.a.1 > 0 && o.b.1 > 0 && self.tasks.len() > 1 && o.a.1.max(o.b.1) <= MDD_MAX_N {
                out.push(detectable_sentence(
                    &label,
                    "overall",
                    o.a.1,
                    o.b.1,
                    mdd(o.a.1, o.b.1),
                ));
            }
            if let (Some(d), Some(p)) = (o.delta, o.p) {
                if p < ALPHA {
                    out.push(format!(
                        "Δ overall ({label}) = {} points, p = {}{}: significant at α = {ALPHA}, but for these tasks, this model and this one run only.",
                        pts(d),
                        pval(p),
                        stars_suffix(p)
                    ));
                } else {
                    out.push(format!(
                        "Δ overall ({label}) = {} points, p = {}: not significant at α = {ALPHA}; neither a gain nor its absence is shown.",
                        pts(d),
                        pval(p)
                    ));
                }
            }
            let ns: Vec<String> = c
                .tasks
                .iter()
                .enumerate()
                .filter_map(|(ti, t)| {
                    let (d, p) = (t.delta?, t.p?);
                    (p >= ALPHA)
                        .then(|| format!("{} ({}, p = {})", self.tasks[ti].id, pts(d), pval(p)))
                })
                .collect();
            if !ns.is_empty() {
                out.push(format!(
                    "Per task ({label}), not significant at α = {ALPHA}: {}.",
                    ns.join("; ")
                ));
            }
            // Power against what this run has.
            let have = o.a.1.min(o.b.1);
            if let (Some(d), Some(n)) = (o.delta, o.n_needed)
                && n > have
            {
                out.push(format!(
                    "Detecting the observed overall Δ ({} points, {label}) with 80% power at α = {ALPHA} needs about {n} trials per arm{}; this run has {have}.",
                    pts(d),
                    per_task(n, self.tasks.len())
                ));
            }
        }
        for p in &self.baseline_plus5 {
            let have = self.overall[p.arm].n;
            if let Some(n) = p.n_needed
                && n > have
            {
                out.push(format!(
                    "Detecting the hypothesised +{:.0} points over {}'s {}% ({}% → {}%) with 80% power at α = {ALPHA} needs about {n} trials per arm{}; this run has {have}.",
                    HYPOTHESISED_GAIN * 100.0,
                    self.arms[p.arm].name,
                    pct(p.from),
                    pct(p.from),
                    pct(p.to),
                    per_task(n, self.tasks.len())
                ));
            }
        }
        let tests = self.test_count();
        let primary = self.comparisons.iter().find(|c| c.primary);
        if tests > 1 {
            // The chance, with no real effect anywhere, that at least one of `k` uncorrected
            // tests comes out significant (treating them as independent).
            let chance = |k: usize| (1.0 - (1.0 - ALPHA).powi(k as i32)) * 100.0;
            match primary {
                Some(c) if c.overall.p.is_some() => out.push(format!(
                    "{tests} Fisher tests in this report: one is primary ({} overall), read at α = {ALPHA} as it stands; {} exploratory and shown with Holm-adjusted p (uncorrected, the chance that {} comes out significant with no real effect anywhere would be about {:.0}%).",
                    self.pair_label(c),
                    if tests == 2 { "the other is".to_string() } else { format!("the other {} are", tests - 1) },
                    if tests == 2 { "it" } else { "at least one of them" },
                    chance(tests - 1),
                )),
                _ => out.push(format!(
                    "{tests} Fisher tests in this report, all exploratory (no baseline → fine-tuned comparison): read their Holm-adjusted p (uncorrected, the chance that at least one comes out significant with no real effect anywhere would be about {:.0}%).",
                    chance(tests)
                )),
            }
        }
        // Training samples.
        let finetuned = self.arms.iter().any(|a| a.role == "finetuned");
        if let Some(samples) = self.samples().filter(|_| finetuned) {
            for (ti, (tr, kept)) in samples.iter().enumerate() {
                if *kept == 0 {
                    out.push(format!(
                        "Task {}: zero training samples (extract kept 0 of {tr} trials): any change on it is not from task-specific training examples.",
                        self.tasks[ti].id
                    ));
                }
            }
        }
        if let Some(tr) = &self.input.training
            && tr.val_loss.is_empty()
        {
            out.push("No validation loss was recorded: over-fitting cannot be judged from the loss curve.".into());
        }
        // Test strength.
        let passed: u64 = self.overall.iter().map(|c| c.successes).sum();
        let measured: u64 = self.overall.iter().map(|c| c.strength_n).sum();
        if passed > 0 && measured == 0 {
            out.push(
                "Test strength was not measured (no passed trial has a mutant-kill share).".into(),
            );
        }
        if self
            .tasks
            .iter()
            .any(|t| super::published::lookup(&t.id).is_some())
        {
            out.push("The published numbers (Thompson 2025) come from another setup (Ollama q4_k_m, rmax = 3, n = 50 per task): they are context, not a baseline measured here, and no test compares them with ours.".into());
        }
        out
    }
}

fn stars_suffix(p: f64) -> String {
    let s = stats::stars(p);
    if s.is_empty() {
        String::new()
    } else {
        format!(" {s}")
    }
}

fn per_task(n: u64, tasks: usize) -> String {
    if tasks > 1 {
        format!(
            " (≈ {} per task over {tasks} tasks)",
            n.div_ceil(tasks as u64)
        )
    } else {
        String::new()
    }
}

fn detectable_sentence(label: &str, who: &str, n1: u64, n2: u64, d: Option<f64>) -> String {
    let n = if n1 == n2 {
        format!("n = {n1} per arm")
    } else {
        format!("n = {n1} vs {n2}")
    };
    match d {
        Some(d) if d >= 99.95 => format!(
            "{label}, {who}, {n}: only a Δ of 100 points (all vs none) could reach p < {ALPHA}."
        ),
        Some(d) => format!(
            "{label}, {who}, {n}: no Δ below {:.1} points could reach p < {ALPHA}, whatever the rates.",
            d
        ),
        None => format!("{label}, {who}, {n}: no outcome at all could reach p < {ALPHA}."),
    }
}

fn list_some(items: &[String], max: usize) -> String {
    if items.len() <= max {
        items.join(", ")
    } else {
        format!("{} and {} more", items[..max].join(", "), items.len() - max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_detectable_matches_brute_force() {
        for n1 in 1..=21 {
            for n2 in 1..=21 {
                let (x, y) = (min_detectable(n1, n2), min_detectable_brute(n1, n2));
                match (x, y) {
                    (Some(x), Some(y)) => assert!((x - y).abs() < 1e-9, "{n1} {n2}: {x} vs {y}"),
                    (None, None) => {}
                    _ => panic!("{n1} {n2}: {x:?} vs {y:?}"),
                }
            }
        }
        assert_eq!(min_detectable(4, 4), Some(100.0));
        assert_eq!(min_detectable(2, 2), None);
    }
}
