//! The report as a neutral document (sections of paragraphs, tables and charts), built once
//! and written out by both the Markdown and the HTML renderer, so they never disagree.

use super::analysis::{ALPHA, Analysis, CONFIDENCE, Cell, HYPOTHESISED_GAIN, R_CAP, Test};
use super::charts;
use super::fmt::{arm_id, cell_id, ci, hval, pct, pts, pval, secs};
use super::published::{self, MARK};
use crate::stats;

/// A run of inline text.
pub enum Inline {
    Text(String),
    Code(String),
    Strong(String),
    /// Text linking to an element id of the HTML page (plain text in Markdown).
    Link(String, String),
}

fn t(s: impl Into<String>) -> Inline {
    Inline::Text(s.into())
}
fn code(s: impl Into<String>) -> Inline {
    Inline::Code(s.into())
}
fn strong(s: impl Into<String>) -> Inline {
    Inline::Strong(s.into())
}
fn link(s: impl Into<String>, id: impl Into<String>) -> Inline {
    Inline::Link(s.into(), id.into())
}

/// A table cell; `num` right-aligns it.
pub struct TCell {
    pub parts: Vec<Inline>,
    pub num: bool,
}

fn c_text(s: impl Into<String>) -> TCell {
    TCell {
        parts: vec![t(s)],
        num: false,
    }
}
fn c_num(s: impl Into<String>) -> TCell {
    TCell {
        parts: vec![t(s)],
        num: true,
    }
}
fn c_parts(parts: Vec<Inline>) -> TCell {
    TCell { parts, num: true }
}
fn dash() -> TCell {
    c_num("–")
}

/// A table with a header row.
pub struct Table {
    pub head: Vec<String>,
    pub rows: Vec<Vec<TCell>>,
}

/// A chart: an inline SVG wrapped in an element with a stable id.
pub struct Chart {
    pub id: &'static str,
    pub svg: String,
    pub caption: String,
}

/// One block of a section.
pub enum Block {
    Para(Vec<Inline>),
    Heading(String),
    List(Vec<Vec<Inline>>),
    Table(Table),
    Chart(Chart),
    /// The per-cell trial lists (HTML only; Markdown points to the CSV).
    TrialLists,
}

/// One section; `id` is its HTML anchor.
pub struct Section {
    pub id: &'static str,
    pub title: String,
    pub blocks: Vec<Block>,
}

/// The whole report.
pub struct Doc {
    pub sections: Vec<Section>,
}

/// A rate as `75.0% (3/4)` linking to its trials; `–` for an empty cell.
fn rate_cell(c: &Cell, target: String) -> TCell {
    match c.rate {
        Some(r) => c_parts(vec![
            link(format!("{}%", pct(r)), target),
            t(format!(" ({}/{})", c.successes, c.n)),
        ]),
        None => c_parts(vec![link("– (0/0)", target)]),
    }
}

fn ci_cell(c: &Cell, target: String) -> TCell {
    match c.rate {
        Some(_) => c_parts(vec![link(ci(c.ci.0, c.ci.1), target)]),
        None => dash(),
    }
}

fn frac_cell(x: (u64, u64), target: String) -> TCell {
    if x.1 == 0 {
        return c_parts(vec![link("0/0", target)]);
    }
    c_parts(vec![
        link(format!("{}/{}", x.0, x.1), target),
        t(format!(" ({}%)", pct(x.0 as f64 / x.1 as f64))),
    ])
}

fn opt(x: Option<String>) -> TCell {
    x.map_or_else(dash, c_num)
}

/// Comparison row cells after the two fractions: Δ, p, h, power n.
fn test_cells(tst: &Test) -> Vec<TCell> {
    vec![
        opt(tst.delta.map(pts)),
        opt(tst.p.map(|p| {
            let s = stats::stars(p);
            if s.is_empty() {
                pval(p)
            } else {
                format!("{} {s}", pval(p))
            }
        })),
        opt(tst
            .h
            .map(|h| format!("{} ({})", hval(h), stats::h_label(h)))),
        opt(tst.n_needed.map(|n| n.to_string())),
        opt(tst.p_holm.map(pval)),
    ]
}

pub fn build(a: &Analysis) -> Doc {
    let mut s = vec![
        question(a),
        overview(a),
        rates(a),
        comparisons(a),
        failures(a),
        conclude(a),
        power(a),
    ];
    s.push(published_section(a));
    s.push(retries(a));
    s.push(strength(a));
    s.push(durations(a));
    s.push(samples(a));
    if let Some(tr) = &a.input.training {
        s.push(training(tr));
    }
    s.push(Section {
        id: "sec-trials",
        title: "Trials".into(),
        blocks: vec![
            Block::Para(vec![
                t("Every trial, per task and arm (✓ passed, ✗ failed, with the failing step). Print one's transcript with "),
                code("pipe show <stage>/<id>"),
                t(", e.g. "),
                code(example_show(a)),
                t(". All columns per trial: "),
                code("trials.csv"),
                t(" / "),
                code("trials.jsonl"),
                t("."),
            ]),
            Block::TrialLists,
        ],
    });
    Doc { sections: s }
}

/// `1 arm`, `2 arms`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn example_show(a: &Analysis) -> String {
    a.overall
        .iter()
        .find_map(|c| c.trials.first())
        .map_or("pipe show trial/stack/base/0".into(), |t| {
            format!("pipe show {}/{}", t.stage, t.id)
        })
}

fn overview(a: &Analysis) -> Section {
    let mut rows = Vec::new();
    for (ai, arm) in a.arms.iter().enumerate() {
        let stage = match arm.role.as_str() {
            "baseline" => "trial",
            "finetuned" => "eval",
            _ => "–",
        };
        rows.push(vec![
            c_text(&arm.name),
            c_text(&arm.role),
            c_text(&arm.model),
            c_num(arm.rmax.to_string()),
            c_text(stage),
            c_parts(vec![link(a.overall[ai].n.to_string(), arm_id(&arm.name))]),
        ]);
    }
    let n_trials = a.input.trials.len();
    let mut blocks = vec![Block::Para(vec![t(format!(
        "{}, {}, {}. Rates are successes / trials with Wilson {:.0}% score intervals; \"overall\" pools all tasks of an arm. Comparisons are two-sided Fisher exact tests at α = {ALPHA} with Cohen's h; Δ = later arm − earlier arm, in percentage points.",
        count(a.tasks.len(), "task"),
        count(a.arms.len(), "arm"),
        count(n_trials, "trial"),
        CONFIDENCE * 100.0
    ))])];
    blocks.push(Block::Table(Table {
        head: ["Arm", "Role", "Model", "rmax", "Stage", "Trials"]
            .map(String::from)
            .to_vec(),
        rows,
    }));
    // The headline: each comparison's overall result in one line.
    let headline: Vec<Vec<Inline>> = a
        .comparisons
        .iter()
        .filter_map(|c| {
            let o = &c.overall;
            let (d, p, h) = (o.delta?, o.p?, o.h?);
            let (e, l) = (&a.arms[c.earlier].name, &a.arms[c.later].name);
            let s = stats::stars(p);
            Some(vec![
                strong(a.pair_label(c)),
                t(" overall: "),
                link(format!("{}/{}", o.a.0, o.a.1), arm_id(e)),
                t(" → "),
                link(format!("{}/{}", o.b.0, o.b.1), arm_id(l)),
                t(format!(
                    " ({}% → {}%), Δ {} points, Fisher p = {}{}, h = {} ({}).",
                    pct(o.a.0 as f64 / o.a.1 as f64),
                    pct(o.b.0 as f64 / o.b.1 as f64),
                    pts(d),
                    pval(p),
                    if s.is_empty() {
                        String::new()
                    } else {
                        format!(" {s}")
                    },
                    hval(h),
                    stats::h_label(h)
                )),
            ])
        })
        .collect();
    if !headline.is_empty() {
        blocks.push(Block::List(headline));
    }
    blocks.push(Block::Para(vec![
        t("Before reading anything into these numbers, see "),
        link("What this report cannot conclude", "sec-cannot"),
        t(" below."),
    ]));
    Section {
        id: "sec-overview",
        title: "Overview".into(),
        blocks,
    }
}

fn rates(a: &Analysis) -> Section {
    let mut head = vec!["Task".to_string(), "Difficulty".to_string()];
    for arm in &a.arms {
        head.push(format!("{} rate", arm.name));
        head.push(format!("{} 95% CI", arm.name));
    }
    let mut rows = Vec::new();
    for (ti, task) in a.tasks.iter().enumerate() {
        let mut row = vec![c_text(task_label(task)), c_text(&task.difficulty)];
        for (ai, arm) in a.arms.iter().enumerate() {
            let c = &a.cells[ti][ai];
            row.push(rate_cell(c, cell_id(&task.id, &arm.name)));
            row.push(ci_cell(c, cell_id(&task.id, &arm.name)));
        }
        rows.push(row);
    }
    let mut row = vec![c_text("overall"), c_text("")];
    for (ai, arm) in a.arms.iter().enumerate() {
        row.push(rate_cell(&a.overall[ai], arm_id(&arm.name)));
        row.push(ci_cell(&a.overall[ai], arm_id(&arm.name)));
    }
    rows.push(row);
    Section {
        id: "sec-rates",
        title: "Success rates".into(),
        blocks: vec![
            Block::Table(Table { head, rows }),
            Block::Chart(Chart {
                id: "chart-rates",
                svg: charts::rates(a),
                caption: "Success rate per task and arm, with Wilson 95% intervals.".into(),
            }),
            Block::Chart(Chart {
                id: "chart-heatmap",
                svg: charts::heatmap(a),
                caption: "Success rate, task × arm (grey: no trials).".into(),
            }),
        ],
    }
}

fn task_label(task: &super::analysis::Task) -> String {
    if task.name.is_empty() || task.name == task.id {
        task.id.clone()
    } else {
        format!("{} ({})", task.name, task.id)
    }
}

fn comparisons(a: &Analysis) -> Section {
    let mut blocks = Vec::new();
    if a.comparisons.is_empty() {
        blocks.push(Block::Para(vec![t(if a.arms.len() <= 1 {
            "Only one arm: no comparison."
        } else {
            "No baseline arm paired with a fine-tuned arm: no comparison."
        })]));
    }
    for (k, c) in a.comparisons.iter().enumerate() {
        let (e, l) = (&a.arms[c.earlier].name, &a.arms[c.later].name);
        blocks.push(Block::Heading(a.pair_label(c)));
        let head = vec![
            "Task".to_string(),
            e.clone(),
            l.clone(),
            "Δ points".into(),
            "Fisher p".into(),
            "Cohen's h".into(),
            "n/arm for 80% power".into(),
            "Holm p (exploratory)".into(),
        ];
        let mut rows = Vec::new();
        for (ti, tst) in c.tasks.iter().enumerate() {
            let id = &a.tasks[ti].id;
            let mut row = vec![
                c_text(id),
                frac_cell(tst.a, cell_id(id, e)),
                frac_cell(tst.b, cell_id(id, l)),
            ];
            row.extend(test_cells(tst));
            rows.push(row);
        }
        let mut row = vec![
            c_text(if c.primary {
                "overall (primary)"
            } else {
                "overall"
            }),
            frac_cell(c.overall.a, arm_id(e)),
            frac_cell(c.overall.b, arm_id(l)),
        ];
        row.extend(test_cells(&c.overall));
        rows.push(row);
        blocks.push(Block::Table(Table { head, rows }));
        blocks.push(Block::Para(vec![t(cmh_sentence(a, c))]));
        if k == 0 {
            blocks.push(Block::Chart(Chart {
                id: "chart-delta",
                svg: charts::delta(a, c),
                caption: format!("Δ points per task, {} (stars: Fisher p).", a.pair_label(c)),
            }));
        }
    }
    if !a.comparisons.is_empty() {
        blocks.push(Block::Para(vec![t(
            "Stars: * p < 0.05, ** p < 0.01, *** p < 0.001 (uncorrected). |h|: negligible < 0.2 ≤ small < 0.5 ≤ medium < 0.8 ≤ large. \"Holm p\" adjusts every exploratory test (all but the primary one) for the others, controlling the chance of any false positive among them at α; read exploratory rows by it. The \"n/arm\" column is the trials per arm a new run would need to detect that row's observed Δ with 80% power at α = 0.05 with this very test (Fisher's, power computed exactly; – when Δ = 0 or above 5,000).",
        )]));
    }
    Section {
        id: "sec-comparisons",
        title: "Comparisons".into(),
        blocks,
    }
}

/// The overall comparison stratified by task, in one sentence.
fn cmh_sentence(a: &Analysis, c: &super::analysis::Comparison) -> String {
    let label = a.pair_label(c);
    match &c.cmh {
        Some(m) => {
            let or = if m.odds_ratio.is_finite() {
                format!("{:.2}", m.odds_ratio)
            } else if m.odds_ratio.is_nan() {
                "undefined".into()
            } else {
                "∞".into()
            };
            format!(
                "Stratified by task (Cochran–Mantel–Haenszel, continuity-corrected, so tasks with very different base rates are compared within themselves): common odds ratio ({label}) {or}, χ² = {:.3}, p = {}{}.",
                m.chi2,
                pval(m.p),
                if c.primary { "" } else { " (exploratory)" }
            )
        }
        None => format!(
            "Stratified by task (Cochran–Mantel–Haenszel): not computable for {label} — no task has trials in both arms with both outcomes."
        ),
    }
}

/// What is tested, which comparison decides it, and how the trials were run.
fn question(a: &Analysis) -> Section {
    let mut blocks = vec![Block::Para(vec![
        strong("Question:"),
        t(format!(
            " does fine-tuning a code model on its own guard-validated output make it better at test-driven development? Hypothesis: the fine-tuned arm's overall success rate is at least the base arm's + {:.0} points.",
            HYPOTHESISED_GAIN * 100.0
        )),
    ])];
    let primary = a.comparisons.iter().find(|c| c.primary);
    let mut about: Vec<Inline> = vec![strong("Primary comparison:"), t(" ")];
    match primary {
        Some(c) => {
            let o = &c.overall;
            about.push(t(format!(
                "{}, overall, two-sided Fisher exact test at α = {ALPHA}. ",
                a.pair_label(c)
            )));
            match (o.delta, o.p) {
                (Some(d), Some(p)) => {
                    about.push(link(
                        format!("{}/{}", o.a.0, o.a.1),
                        arm_id(&a.arms[c.earlier].name),
                    ));
                    about.push(t(" → "));
                    about.push(link(
                        format!("{}/{}", o.b.0, o.b.1),
                        arm_id(&a.arms[c.later].name),
                    ));
                    let verdict = if d >= HYPOTHESISED_GAIN * 100.0 && p < ALPHA {
                        "significant (against no difference), and the observed Δ reaches the hypothesised size — which this test alone does not show the true gain does"
                    } else if p < ALPHA && d > 0.0 {
                        "significant (against no difference), but the observed Δ is smaller than the hypothesised gain"
                    } else if p < ALPHA {
                        "significant — in the wrong direction: the fine-tuned arm is worse"
                    } else {
                        "not significant: this run neither shows the hypothesised gain nor rules it out"
                    };
                    about.push(t(format!(
                        ": Δ {} points, p = {}; {verdict}.",
                        pts(d),
                        pval(p)
                    )));
                }
                _ => about.push(t("not decidable yet: an arm has no trials.")),
            }
            let others = a.test_count().saturating_sub(1);
            if others > 0 {
                about.push(t(format!(
                    " Everything else — {others} per-task or other-pair test{} — is exploratory, with Holm-adjusted p beside its own.",
                    if others == 1 { "" } else { "s" }
                )));
            }
        }
        None if a.arms.iter().any(|x| x.role == "finetuned") => about.push(t(
            "base → fine-tuned, overall — not available: no baseline arm is paired with a fine-tuned arm that has trials.",
        )),
        None => about.push(t(
            "none. This is a baseline study (no fine-tuned arm): it measures the base model alone and says nothing about whether fine-tuning helps.",
        )),
    }
    blocks.push(Block::Para(about));
    if let Some(p) = &a.input.provenance {
        blocks.push(Block::Table(Table {
            head: vec!["Setup".into(), "".into()],
            rows: provenance_rows(a, p),
        }));
    }
    Section {
        id: "sec-question",
        title: "Question and setup".into(),
        blocks,
    }
}

fn when(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn provenance_rows(a: &Analysis, p: &super::Provenance) -> Vec<Vec<TCell>> {
    let mut rows = Vec::new();
    let mut row = |k: &str, v: Vec<Inline>| {
        rows.push(vec![
            c_text(k),
            TCell {
                parts: v,
                num: false,
            },
        ])
    };
    for m in &p.models {
        let role = a
            .arms
            .iter()
            .find(|x| x.name == m.arm)
            .map_or("", |x| x.role.as_str());
        let mut v = vec![t(format!("{} — ", m.model)), code(&m.identity)];
        if let Some(a) = &m.adapter {
            v.push(t(" + the LoRA adapter of train output "));
            v.push(code(a.chars().take(12).collect::<String>()));
            v.push(t(", applied unmerged"));
        }
        row(&format!("model of {} ({role})", m.arm), v);
    }
    row(
        "sampling",
        vec![t(format!(
            "temperature {}, top_p {}, max_tokens {}",
            p.temperature, p.top_p, p.max_tokens
        ))],
    );
    row(
        "seeds",
        vec![t(format!(
            "experiment seed {}; each trial's seed from (seed, task, index), the same in every arm; each request's from (trial seed, step, retry)",
            p.seed
        ))],
    );
    row(
        "test guard",
        vec![t(if p.mutation_guard {
            "tests: syntax check; implementation: pytest in a bubblewrap sandbox; plus the mutation guard (tests must kill half the mutants) — stricter than the published protocol"
        } else {
            "tests: syntax check only (the published protocol); implementation: pytest in a bubblewrap sandbox"
        })],
    );
    row(
        "guard limits",
        vec![t(format!(
            "{} s, {} MB, {} processes per pytest run",
            p.guard_timeout_s, p.guard_memory_mb, p.guard_max_processes
        ))],
    );
    if !p.guard_env.is_empty() {
        row("guard Python", vec![code(&p.guard_env)]);
    }
    if !p.pipe_versions.is_empty() {
        row("pipe version", vec![t(p.pipe_versions.join(", "))]);
    }
    if let (Some(f), Some(l)) = (p.first_ms, p.last_ms) {
        row(
            "trials ran",
            vec![t(format!("{} to {} (UTC)", when(f), when(l)))],
        );
    }
    if !p.hosts.is_empty() {
        row("machines", vec![t(p.hosts.join(", "))]);
    }
    if let Some(sys) = &p.system_prompt {
        row("system prompt", vec![code(sys)]);
    }
    rows
}

/// Why trials failed: per arm and task, by step and by cause, and how many replies were cut
/// off — the numbers that tell a user what to change.
fn failures(a: &Analysis) -> Section {
    // The causes that occur anywhere, in column order.
    let seen: std::collections::BTreeSet<Option<super::Cause>> = a
        .overall
        .iter()
        .flat_map(|c| c.causes.keys().map(|(_, cause)| *cause))
        .collect();
    let mut blocks = vec![Block::Para(vec![t(
        "Failed trials by the step that used up its attempts and by the cause of its last attempt, read from the transcripts; then every request whose reply was cut off by max_tokens (truncated replies never parse or run as meant: raise sampling.max_tokens). Each number links to the trials it counts.",
    )])];
    let failed_total: u64 = a.overall.iter().map(|c| c.n - c.successes).sum();
    if a.input.trials.is_empty() {
        blocks.push(Block::Para(vec![t("No trials yet.")]));
    } else if failed_total == 0 {
        blocks.push(Block::Para(vec![t("No trial failed.")]));
    }
    let mut head = vec!["Arm".to_string(), "Task".into(), "failed".into()];
    for step in ["tests", "impl", "mutation"] {
        head.push(format!("at {step}"));
    }
    for c in &seen {
        head.push(c.map_or("cause unknown".into(), |c| c.label().to_string()));
    }
    head.push("truncated replies".into());
    let mut rows = Vec::new();
    for (ai, arm) in a.arms.iter().enumerate() {
        let mut one = |label: &str, c: &Cell, target: String| {
            let failed = c.n - c.successes;
            let mut row = vec![
                c_text(&arm.name),
                c_text(label),
                c_parts(vec![link(format!("{failed}/{}", c.n), target.clone())]),
            ];
            for step in ["tests", "impl", "mutation"] {
                row.push(count_cell(c.failed_at(step), &target));
            }
            for cause in &seen {
                row.push(count_cell(c.failed_with(*cause), &target));
            }
            row.push(if c.attempts == 0 {
                dash()
            } else {
                c_parts(vec![
                    link(format!("{}/{}", c.truncated, c.attempts), target),
                    t(format!(
                        " ({}%)",
                        pct(c.truncated as f64 / c.attempts as f64)
                    )),
                ])
            });
            rows.push(row);
        };
        for (ti, task) in a.tasks.iter().enumerate() {
            one(&task.id, &a.cells[ti][ai], cell_id(&task.id, &arm.name));
        }
        one("overall", &a.overall[ai], arm_id(&arm.name));
    }
    if !a.input.trials.is_empty() {
        blocks.push(Block::Table(Table { head, rows }));
        blocks.push(Block::Para(vec![t(
            "Causes: a truncated reply is counted as such whatever the guard said of it; \"NameError\" is most often tests that use pytest.raises without import pytest (tests are frozen once they parse, so every implementation then fails); \"no tests ran\" is an accepted test file with no test in it; \"weak tests\" a passing implementation whose tests killed too few mutants (mutation guard only).",
        )]));
    }
    Section {
        id: "sec-failures",
        title: "Why trials failed".into(),
        blocks,
    }
}

fn count_cell(k: u64, target: &str) -> TCell {
    if k == 0 {
        c_num("0")
    } else {
        c_parts(vec![link(k.to_string(), target.to_string())])
    }
}

fn conclude(a: &Analysis) -> Section {
    Section {
        id: "sec-cannot",
        title: "What this report cannot conclude".into(),
        blocks: vec![Block::List(
            a.statements.iter().map(|s| vec![t(s)]).collect(),
        )],
    }
}

fn power(a: &Analysis) -> Section {
    let mut blocks = vec![Block::Para(vec![t(format!(
        "Trials per arm needed for 80% power at α = {ALPHA} with the report's own two-sided Fisher exact test (power computed exactly over both binomials, not by the normal approximation, which promises far too much near 0% and 100%), for the observed Δ and for the hypothesised +{:.0} points over the earlier arm's observed overall rate (capped at 100%). \"Now\" is what this run has per arm.",
        HYPOTHESISED_GAIN * 100.0
    ))])];
    let head: Vec<String> = [
        "Comparison",
        "Effect",
        "Rates",
        "n/arm needed",
        "n/arm now",
        "per task needed",
    ]
    .map(String::from)
    .to_vec();
    let tasks = a.tasks.len().max(1) as u64;
    let per_task = |n: Option<u64>| opt(n.map(|n| n.div_ceil(tasks).to_string()));
    let mut rows = Vec::new();
    let mut plus5_shown: Vec<usize> = Vec::new();
    for c in &a.comparisons {
        let (e, l) = (&a.arms[c.earlier].name, &a.arms[c.later].name);
        let label = a.pair_label(c);
        let now = c.overall.a.1.min(c.overall.b.1);
        if let (Some(d), Some(p1), Some(p2)) = (
            c.overall.delta,
            a.overall[c.earlier].rate,
            a.overall[c.later].rate,
        ) {
            rows.push(vec![
                c_text(&label),
                c_text(format!("observed overall Δ {}", pts(d))),
                c_parts(vec![
                    link(format!("{}%", pct(p1)), arm_id(e)),
                    t(" → "),
                    link(format!("{}%", pct(p2)), arm_id(l)),
                ]),
                opt(c.overall.n_needed.map(|n| n.to_string())),
                c_num(now.to_string()),
                per_task(c.overall.n_needed),
            ]);
        }
        // The hypothesised gain depends on the earlier arm only: one row per arm, however
        // many comparisons start from it.
        if let Some(p) = c.plus5.as_ref().filter(|p| !plus5_shown.contains(&p.arm)) {
            plus5_shown.push(p.arm);
            rows.push(plus5_row(&label, p, a, now, per_task(p.n_needed)));
        }
    }
    for p in &a.baseline_plus5 {
        if !plus5_shown.contains(&p.arm) {
            let now = a.overall[p.arm].n;
            rows.push(plus5_row(
                &a.arms[p.arm].name,
                p,
                a,
                now,
                per_task(p.n_needed),
            ));
        }
    }
    if rows.is_empty() {
        blocks.push(Block::Para(vec![t("No rates yet: nothing to size.")]));
    } else {
        blocks.push(Block::Table(Table { head, rows }));
    }
    // Per task, observed Δ.
    for c in &a.comparisons {
        let (e, l) = (&a.arms[c.earlier].name, &a.arms[c.later].name);
        blocks.push(Block::Heading(format!("Per task, {}", a.pair_label(c))));
        let mut rows = Vec::new();
        for (ti, tst) in c.tasks.iter().enumerate() {
            let id = &a.tasks[ti].id;
            let rates = match (a.cells[ti][c.earlier].rate, a.cells[ti][c.later].rate) {
                (Some(p1), Some(p2)) => c_parts(vec![
                    link(format!("{}%", pct(p1)), cell_id(id, e)),
                    t(" → "),
                    link(format!("{}%", pct(p2)), cell_id(id, l)),
                ]),
                _ => dash(),
            };
            rows.push(vec![
                c_text(id),
                opt(tst.delta.map(pts)),
                rates,
                opt(tst.n_needed.map(|n| n.to_string())),
                c_num(tst.a.1.min(tst.b.1).to_string()),
            ]);
        }
        blocks.push(Block::Table(Table {
            head: ["Task", "observed Δ", "Rates", "n/arm needed", "n/arm now"]
                .map(String::from)
                .to_vec(),
            rows,
        }));
    }
    Section {
        id: "sec-power",
        title: "Power".into(),
        blocks,
    }
}

fn plus5_row(
    label: &str,
    p: &super::analysis::Plus5,
    a: &Analysis,
    now: u64,
    per_task: TCell,
) -> Vec<TCell> {
    let arm = &a.arms[p.arm].name;
    vec![
        c_text(label),
        c_text(format!(
            "hypothesised +{:.0} over {arm}",
            HYPOTHESISED_GAIN * 100.0
        )),
        c_parts(vec![
            link(format!("{}%", pct(p.from)), arm_id(arm)),
            t(format!(" → {}%", pct(p.to))),
        ]),
        opt(p.n_needed.map(|n| n.to_string())),
        c_num(now.to_string()),
        per_task,
    ]
}

fn published_section(a: &Analysis) -> Section {
    let mut head = vec!["Task".to_string()];
    for arm in &a.arms {
        head.push(format!("ours: {}", arm.name));
    }
    for h in ["14B", "7B", "3B", "fine-tuned 7B hypothesis"] {
        head.push(format!("{h} (published)"));
    }
    let mut rows = Vec::new();
    for (ti, task) in a.tasks.iter().enumerate() {
        let mut row = vec![c_text(&task.id)];
        for (ai, arm) in a.arms.iter().enumerate() {
            let c = &a.cells[ti][ai];
            row.push(match c.rate {
                Some(r) => c_parts(vec![link(
                    format!("{}%", pct(r)),
                    cell_id(&task.id, &arm.name),
                )]),
                None => dash(),
            });
        }
        match published::lookup(&task.id) {
            Some(p) => row.extend([p.q14, p.q7, p.q3, p.ft7].map(|x| c_num(format!("{x}%")))),
            None => row.extend((0..4).map(|_| dash())),
        }
        rows.push(row);
    }
    let mut row = vec![c_text("overall")];
    for (ai, arm) in a.arms.iter().enumerate() {
        row.push(match a.overall[ai].rate {
            Some(r) => c_parts(vec![link(format!("{}%", pct(r)), arm_id(&arm.name))]),
            None => dash(),
        });
    }
    let ids: Vec<&str> = a.tasks.iter().map(|t| t.id.as_str()).collect();
    let all_six = published::pooled(ids.iter().copied()).is_some_and(|(_, n)| n == 6);
    let pooled_note = match published::pooled(ids.iter().copied()) {
        Some(_) if all_six => {
            let (q14, q7, q3, ft) = published::OVERALL;
            row.extend(
                [
                    format!("{q14}%"),
                    format!("{q7}%"),
                    format!("{q3}%"),
                    format!("{ft}%"),
                ]
                .map(c_num),
            );
            " The overall row is the paper's own, over all six tasks.".to_string()
        }
        Some((p, n)) => {
            row[0] = c_text(format!(
                "overall ({n} task{})",
                if n == 1 { "" } else { "s" }
            ));
            row.extend(p.map(|x| c_num(format!("{x:.0}%"))));
            format!(
                " The published overall row is pooled over the {n} task{} run here that have published numbers (each had n = 50, so it is their mean), not the paper's six-task overall ({}% / {}% / {}%), so that it compares like with like.",
                if n == 1 { "" } else { "s" },
                published::OVERALL.0,
                published::OVERALL.1,
                published::OVERALL.2
            )
        }
        None => {
            row.extend((0..4).map(|_| dash()));
            " None of the tasks run has published numbers.".to_string()
        }
    };
    rows.push(row);

    let mut head2 = vec!["Task".to_string()];
    for arm in &a.arms {
        head2.push(format!("ours: {} mean s", arm.name));
    }
    head2.push("7B mean s (published)".into());
    let mut rows2 = Vec::new();
    for (ti, task) in a.tasks.iter().enumerate() {
        let mut row = vec![c_text(&task.id)];
        for (ai, arm) in a.arms.iter().enumerate() {
            row.push(match a.cells[ti][ai].durations {
                Some(d) => c_parts(vec![link(secs(d.mean), cell_id(&task.id, &arm.name))]),
                None => dash(),
            });
        }
        row.push(opt(published::lookup(&task.id).map(|p| secs(p.q7_secs))));
        rows2.push(row);
    }
    Section {
        id: "sec-published",
        title: "Beside the published numbers".into(),
        blocks: vec![
            Block::Para(vec![
                strong(format!("Columns marked (published): {MARK}.")),
                t(format!(
                    " Thompson (2025), AtomicGuard TDD workflow, Qwen2.5-Coder on Ollama q4_k_m, rmax = 3, n = 50 per task, T = 0.7; the fine-tuned 7B column is that paper's hypothesis (≥ 5 points overall), not a result. Tasks without a published number show –.{pooled_note} The published durations are the paper's hardware, ours this machine's."
                )),
            ]),
            Block::Table(Table { head, rows }),
            Block::Table(Table {
                head: head2,
                rows: rows2,
            }),
        ],
    }
}

fn retries(a: &Analysis) -> Section {
    let mut head = vec!["Arm".to_string(), "Step".to_string(), "passed".to_string()];
    for r in 0..a.r_columns {
        head.push(if r == R_CAP {
            format!("R≥{r}")
        } else {
            format!("R={r}")
        });
    }
    let mut rows = Vec::new();
    for (ai, arm) in a.arms.iter().enumerate() {
        let c = &a.overall[ai];
        for (step, counts) in [("tests", &c.r_tests), ("impl", &c.r_impl)] {
            let mut row = vec![
                c_text(&arm.name),
                c_text(step),
                c_parts(vec![link(c.successes.to_string(), arm_id(&arm.name))]),
            ];
            for r in 0..a.r_columns {
                let k = counts.get(r).copied().unwrap_or(0);
                row.push(if c.successes == 0 || (r > arm.rmax as usize && k == 0) {
                    dash()
                } else {
                    c_num(format!("{}% ({k})", pct(k as f64 / c.successes as f64)))
                });
            }
            rows.push(row);
        }
    }
    let mut rows2 = Vec::new();
    for (ai, arm) in a.arms.iter().enumerate() {
        let c = &a.overall[ai];
        let f = |x: Option<f64>| opt(x.map(|x| format!("{x:.2}")));
        rows2.push(vec![
            c_text(&arm.name),
            c_parts(vec![link(c.successes.to_string(), arm_id(&arm.name))]),
            f(c.mean_r_tests),
            f(c.mean_r_impl),
            f(c.mean_retries),
        ]);
    }
    Section {
        id: "sec-retries",
        title: "Retries".into(),
        blocks: vec![
            Block::Para(vec![t(
                "R is a step's retries: attempts − 1 (R = 0 means the first attempt passed; at most rmax). Among passed trials only, the share (count) that passed each step at R; the mean retries are R_tests + R_impl per passed trial.",
            )]),
            Block::Table(Table { head, rows }),
            Block::Table(Table {
                head: [
                    "Arm",
                    "passed",
                    "mean R tests",
                    "mean R impl",
                    "mean R_tests + R_impl",
                ]
                .map(String::from)
                .to_vec(),
                rows: rows2,
            }),
            Block::Chart(Chart {
                id: "chart-retries",
                svg: charts::retries(a),
                caption: "Share of passed trials per R, tests step and implementation step.".into(),
            }),
        ],
    }
}

fn strength(a: &Analysis) -> Section {
    let mut head = vec!["Task".to_string()];
    for arm in &a.arms {
        head.push(format!("{} mean (n)", arm.name));
    }
    let cell = |c: &Cell, target: String| match c.strength {
        Some(s) => c_parts(vec![
            link(format!("{}%", pct(s)), target),
            t(format!(" ({})", c.strength_n)),
        ]),
        None => dash(),
    };
    let mut rows = Vec::new();
    for (ti, task) in a.tasks.iter().enumerate() {
        let mut row = vec![c_text(&task.id)];
        for (ai, arm) in a.arms.iter().enumerate() {
            row.push(cell(&a.cells[ti][ai], cell_id(&task.id, &arm.name)));
        }
        rows.push(row);
    }
    let mut row = vec![c_text("overall")];
    for (ai, arm) in a.arms.iter().enumerate() {
        row.push(cell(&a.overall[ai], arm_id(&arm.name)));
    }
    rows.push(row);
    let mut blocks = vec![Block::Para(vec![t(
        "The share of mutants of the passing implementation that the generated tests killed, averaged over passed trials that measured it (n).",
    )])];
    let passed: u64 = a.overall.iter().map(|c| c.successes).sum();
    let measured: u64 = a.overall.iter().map(|c| c.strength_n).sum();
    if measured == 0 {
        blocks.push(Block::Para(vec![t(if passed == 0 {
            "Nothing to show: no trial passed, and strength is measured on passing implementations only."
        } else {
            "Nothing to show: no passed trial has a mutant-kill share recorded."
        })]));
    } else {
        blocks.push(Block::Table(Table { head, rows }));
    }
    Section {
        id: "sec-strength",
        title: "Test strength".into(),
        blocks,
    }
}

fn durations(a: &Analysis) -> Section {
    let head = [
        "Task",
        "Arm",
        "n",
        "median s",
        "IQR s",
        "mean s",
        "mean prompt tokens",
        "mean completion tokens",
    ]
    .map(String::from)
    .to_vec();
    let row = |label: &str, arm: &str, c: &Cell, target: String| {
        let (med, iqr, mean) = match c.durations {
            Some(d) => (
                c_num(secs(d.median)),
                c_num(format!("{}–{}", secs(d.q25), secs(d.q75))),
                c_num(secs(d.mean)),
            ),
            None => (dash(), dash(), dash()),
        };
        vec![
            c_text(label),
            c_text(arm),
            c_parts(vec![link(c.n.to_string(), target)]),
            med,
            iqr,
            mean,
            opt(c.mean_prompt.map(|x| format!("{x:.0}"))),
            opt(c.mean_completion.map(|x| format!("{x:.0}"))),
        ]
    };
    let mut rows = Vec::new();
    for (ti, task) in a.tasks.iter().enumerate() {
        for (ai, arm) in a.arms.iter().enumerate() {
            rows.push(row(
                &task.id,
                &arm.name,
                &a.cells[ti][ai],
                cell_id(&task.id, &arm.name),
            ));
        }
    }
    for (ai, arm) in a.arms.iter().enumerate() {
        rows.push(row("overall", &arm.name, &a.overall[ai], arm_id(&arm.name)));
    }
    Section {
        id: "sec-durations",
        title: "Durations and tokens".into(),
        blocks: vec![
            Block::Para(vec![t(
                "Wall time per trial in seconds (median, interquartile range q25–q75, mean) and mean tokens per trial over all its requests; all trials, passed or not.",
            )]),
            Block::Table(Table { head, rows }),
            Block::Chart(Chart {
                id: "chart-durations",
                svg: charts::durations(a),
                caption: "Trial durations per task and arm: box q25–q75, line at the median, whiskers min–max.".into(),
            }),
        ],
    }
}

fn samples(a: &Analysis) -> Section {
    let blocks = match a.samples() {
        None => vec![Block::Para(vec![t(
            "The extract stage has not been built: no training-sample counts yet.",
        )])],
        Some(s) => {
            let mut rows = Vec::new();
            let (mut tt, mut tk) = (0u64, 0u64);
            for (ti, (tr, kept)) in s.iter().enumerate() {
                tt += *tr as u64;
                tk += *kept as u64;
                rows.push(vec![
                    c_text(&a.tasks[ti].id),
                    c_num(tr.to_string()),
                    c_num(kept.to_string()),
                    c_text(if *kept == 0 {
                        "zero samples: nothing to learn from for this task"
                    } else {
                        ""
                    }),
                ]);
            }
            rows.push(vec![
                c_text("total"),
                c_num(tt.to_string()),
                c_num(tk.to_string()),
                c_text(""),
            ]);
            vec![
                Block::Para(vec![t(
                    "Training samples the extract stage kept per task (first-attempt tests that a passing implementation was built against, deduplicated), out of the source arm's trials.",
                )]),
                Block::Table(Table {
                    head: ["Task", "trials", "samples kept", "note"]
                        .map(String::from)
                        .to_vec(),
                    rows,
                }),
            ]
        }
    };
    Section {
        id: "sec-samples",
        title: "Training samples".into(),
        blocks,
    }
}

fn training(tr: &super::Training) -> Section {
    let summary = |name: &str, v: &[(u64, f64)]| -> Vec<Inline> {
        let fin: Vec<&(u64, f64)> = v.iter().filter(|(_, l)| l.is_finite()).collect();
        match (
            fin.first(),
            fin.last(),
            fin.iter().min_by(|x, y| x.1.total_cmp(&y.1)),
        ) {
            (Some(f), Some(l), Some(m)) => vec![t(format!(
                "{name}: {:.4} at step {} → {:.4} at step {} (lowest {:.4} at step {}, {} points).",
                f.1,
                f.0,
                l.1,
                l.0,
                m.1,
                m.0,
                fin.len()
            ))],
            _ => vec![t(format!("{name}: no points."))],
        }
    };
    if let Some(why) = &tr.skipped {
        return Section {
            id: "sec-training",
            title: "Training loss".into(),
            blocks: vec![Block::Para(vec![t(format!(
                "No adapter was trained: {why}. So there is no fine-tuned model, and the \
                 fine-tuned arm was not run: its cells are empty."
            ))])],
        };
    }
    let mut about = format!(
        "Trained on {} samples ({} held out for validation).",
        tr.samples, tr.val_samples
    );
    if tr.samples < 20 {
        about.push_str(
            " That is few: the fine-tuned arm can differ from its base by little more than noise, and a validation loss from so few samples says little.",
        );
    }
    Section {
        id: "sec-training",
        title: "Training loss".into(),
        blocks: vec![
            Block::Para(vec![t(about)]),
            Block::List(vec![
                summary("training loss", &tr.loss),
                summary("validation loss", &tr.val_loss),
            ]),
            Block::Chart(Chart {
                id: "chart-loss",
                svg: charts::loss(tr),
                caption: "Training and validation loss per step.".into(),
            }),
        ],
    }
}
