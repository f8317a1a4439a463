//! The report renderer on hand-built inputs: every number it prints agrees with `pipe::stats`,
//! the HTML is well-formed XML whose internal links all resolve, the CSV/JSON files read back,
//! the output is byte-for-byte deterministic, and sparse inputs (no trials, one arm, empty
//! cells, zero training samples) render without panicking and say what cannot be concluded.

use pipe::report::{
    ArmInfo, AttemptRow, Cause, ExtractCounts, Rendered, ReportInput, TaskInfo, Training, TrialRow,
    render,
};
use pipe::stats;
use std::collections::{BTreeMap, BTreeSet};

fn task(id: &str, name: &str, difficulty: &str) -> TaskInfo {
    TaskInfo {
        id: id.into(),
        name: name.into(),
        difficulty: difficulty.into(),
    }
}

fn arm(name: &str, role: &str) -> ArmInfo {
    ArmInfo {
        name: name.into(),
        role: role.into(),
        model: format!("Qwen2.5-Coder 7B ({name})"),
        rmax: 3,
    }
}

/// One trial; `r` = (R tests, R impl) when it passed, the failing step otherwise.
fn trial(task: &str, arm: &str, index: u32, passed: bool, r: (u32, u32), secs: f64) -> TrialRow {
    let stage = if arm == "base" { "trial" } else { "eval" };
    TrialRow {
        id: format!("{task}/{arm}/{index}"),
        stage: stage.into(),
        task: task.into(),
        arm: arm.into(),
        index,
        passed,
        failed_step: (!passed).then(|| "impl".to_string()),
        tests_attempts: r.0 + 1,
        impl_attempts: if passed { r.1 + 1 } else { 4 },
        retries_tests: passed.then_some(r.0),
        retries_impl: passed.then_some(r.1),
        test_strength: passed.then_some(0.5 + 0.1 * index as f64),
        duration_ms: (secs * 1000.0) as u64,
        prompt_tokens: 1000 + 10 * index as u64,
        completion_tokens: 300 + index as u64,
        transcript: blake3::hash(format!("{task}/{arm}/{index}").as_bytes())
            .to_hex()
            .to_string(),
        cause: (!passed).then_some(Cause::Assertion),
        truncated: 0,
        attempts: vec![],
    }
}

/// Passes per (task, arm) out of 4: stack 3 → 4, lru_cache 2 → 3, template 0 → 1.
const PASSES: [(&str, u32, u32); 3] = [("stack", 3, 4), ("lru_cache", 2, 3), ("template", 0, 1)];

fn input() -> ReportInput {
    let mut trials = Vec::new();
    for (t, base, ft) in PASSES {
        for (a, k) in [("base", base), ("finetuned", ft)] {
            for i in 0..4 {
                trials.push(trial(t, a, i, i < k, (i % 2, i % 3), 5.0 + i as f64 * 1.5));
            }
        }
    }
    let mut extract = BTreeMap::new();
    extract.insert("stack".to_string(), ExtractCounts { trials: 4, kept: 3 });
    extract.insert(
        "lru_cache".to_string(),
        ExtractCounts { trials: 4, kept: 1 },
    );
    extract.insert("template".to_string(), ExtractCounts { trials: 4, kept: 0 });
    ReportInput {
        experiment: "tdd <test> & \"friends\"".into(),
        tasks: vec![
            task("stack", "Stack", "easy"),
            task("lru_cache", "LRU cache", "medium"),
            task("template", "Template", "hard"),
        ],
        arms: vec![arm("base", "baseline"), arm("finetuned", "finetuned")],
        trials,
        extract: Some(extract),
        training: Some(Training {
            loss: (0..20).map(|s| (s * 10, 2.0 / (1.0 + s as f64))).collect(),
            val_loss: (0..4).map(|s| (s * 50, 1.5 / (1.0 + s as f64))).collect(),
            samples: 40,
            val_samples: 4,
            skipped: None,
        }),
        provenance: None,
    }
}

fn text(r: &Rendered, name: &str) -> String {
    String::from_utf8(
        r.get(name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .to_vec(),
    )
    .unwrap()
}

fn pct(x: f64) -> String {
    format!("{:.1}", x * 100.0)
}

/// The page as XML (`<!DOCTYPE html>` is a DTD to roxmltree, an empty one).
fn parse(html: &str) -> roxmltree::Document<'_> {
    let opt = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(html, opt).unwrap_or_else(|e| panic!("not XML: {e}"))
}

/// Parses the page as XML and checks every internal link and every chart; returns the ids.
fn check_html(html: &str, charts: &[&str]) -> BTreeSet<String> {
    assert!(html.starts_with("<!DOCTYPE html>"));
    let doc = parse(html);
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "html");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/1999/xhtml")
    );
    let mut ids = BTreeSet::new();
    for n in doc.descendants().filter(|n| n.is_element()) {
        if let Some(id) = n.attribute("id") {
            assert!(ids.insert(id.to_string()), "duplicate id {id}");
        }
        for attr in ["src", "href"] {
            if let Some(v) = n.attribute(attr) {
                assert!(
                    v.starts_with('#'),
                    "external resource {attr}={v} (the page must be self-contained)"
                );
            }
        }
        assert_ne!(n.tag_name().name(), "script");
    }
    let hrefs: Vec<&str> = doc
        .descendants()
        .filter_map(|n| n.attribute("href"))
        .collect();
    assert!(!hrefs.is_empty());
    for h in hrefs {
        assert!(ids.contains(&h[1..]), "href {h} resolves to no id");
    }
    for id in charts {
        let fig = doc
            .descendants()
            .find(|n| n.attribute("id") == Some(id))
            .unwrap_or_else(|| panic!("no element with id {id}"));
        let svg = fig
            .descendants()
            .find(|n| n.tag_name().name() == "svg")
            .unwrap_or_else(|| panic!("{id}: no <svg>"));
        assert_eq!(
            svg.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let shapes = svg
            .descendants()
            .filter(|n| matches!(n.tag_name().name(), "rect" | "path" | "polyline" | "line"))
            .count();
        assert!(shapes > 3, "{id}: only {shapes} shapes");
        let texts = svg
            .descendants()
            .filter(|n| n.tag_name().name() == "text")
            .count();
        assert!(texts > 0, "{id}: no text");
    }
    assert!(
        !html.contains("chart unavailable"),
        "a chart failed to draw"
    );
    ids
}

#[test]
fn markdown_numbers_match_the_statistics() {
    let r = render(&input());
    let md = text(&r, "report.md");
    for (t, base, ft) in PASSES {
        for k in [base, ft] {
            let rate = format!("{}% ({k}/4)", pct(k as f64 / 4.0));
            let (lo, hi) = stats::wilson(k as u64, 4, 0.95);
            let ci = format!("[{}, {}]", pct(lo), pct(hi));
            let line = md
                .lines()
                .find(|l| l.starts_with("| ") && l.contains(&format!("({t})")))
                .unwrap_or_else(|| panic!("no rate row for {t}"));
            assert!(line.contains(&rate), "{t}: {rate} not in {line}");
            assert!(line.contains(&ci), "{t}: {ci} not in {line}");
        }
        // The comparison row: Δ, p with stars, h with its label.
        let (p1, p2) = (base as f64 / 4.0, ft as f64 / 4.0);
        let delta = format!("{:+.1}", (p2 - p1) * 100.0);
        let p =
            stats::fisher_exact_two_sided(base as u64, 4 - base as u64, ft as u64, 4 - ft as u64);
        let stars = stats::stars(p);
        let p_text = if stars.is_empty() {
            format!("{p:.4}")
        } else {
            format!("{p:.4} {stars}")
        };
        let h = stats::cohens_h(p1, p2);
        let h_text = format!("{h:+.2} ({})", stats::h_label(h));
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| {t} | {base}/4 ")))
            .unwrap_or_else(|| panic!("no comparison row for {t}"));
        for want in [&delta, &p_text, &h_text] {
            assert!(row.contains(want.as_str()), "{t}: {want} not in {row}");
        }
    }
    // Overall: 5/12 → 8/12, pooled.
    let p = stats::fisher_exact_two_sided(5, 7, 8, 4);
    let h = stats::cohens_h(5.0 / 12.0, 8.0 / 12.0);
    let row = md
        .lines()
        .find(|l| l.starts_with("| overall (primary) | 5/12 "))
        .expect("overall comparison");
    assert!(row.contains("+25.0"), "{row}");
    assert!(row.contains(&format!("{p:.4}")), "{row}");
    assert!(
        row.contains(&format!("{h:+.2} ({})", stats::h_label(h))),
        "{row}"
    );
    let n = stats::n_per_arm_for_fisher_power(5.0 / 12.0, 8.0 / 12.0, 0.05, 0.8, 5000).unwrap();
    assert!(
        row.contains(&format!("| {n} |")),
        "power n {n} not in {row}"
    );
    // The overall rate row.
    let (lo, hi) = stats::wilson(5, 12, 0.95);
    let row = md
        .lines()
        .find(|l| l.starts_with("| overall |") && l.contains("(5/12)"))
        .expect("overall rate row");
    assert!(
        row.contains(&format!("41.7% (5/12) | [{}, {}]", pct(lo), pct(hi))),
        "{row}"
    );

    // Published numbers beside ours, marked, "–" where there is none.
    assert!(md.contains("published (Thompson 2025) — not measured here"));
    assert!(
        md.contains("| stack | 75.0% | 100.0% | 88% | 94% | 68% | 96% |"),
        "{md}"
    );
    assert!(md.contains("| lru_cache | 50.0% | 75.0% | 66% | 50% | 4% | 58% |"));
    assert!(md.contains("| overall (3 tasks) | 41.7% | 66.7% | 74% | 55% | 25% | 62% |"));
    // Durations 5, 6.5, 8, 9.5 s: mean 7.25.
    let mean = format!("{:.1}", 7.25);
    assert!(
        md.contains(&format!("| stack | {mean} | {mean} | 6.9 |")),
        "mean seconds beside the 7B's"
    );

    // Retries: base passed 5 trials with R_tests = i % 2 for i in {0,1,2} ∪ {0,1}.
    assert!(md.contains("R is a step's retries: attempts − 1"));
    assert!(
        md.contains("| base | tests | 5 | 60.0% (3) | 40.0% (2) | 0.0% (0) | 0.0% (0) |"),
        "{md}"
    );

    // Cannot conclude: the minimum detectable Δ, non-significance, zero samples, small n.
    for want in [
        "n = 4 per arm: only a Δ of 100 points (all vs none) could reach p < 0.05",
        &format!("Δ overall (base → finetuned) = +25.0 points, p = {p:.4}: not significant"),
        "Task template: zero training samples",
        "Fewer than 10 trials per task and arm (n = 4): the 95% CIs are wide",
        "Fisher tests in this report: one is primary (base → finetuned overall)",
    ] {
        assert!(md.contains(want), "missing statement: {want}");
    }
    // Power for the hypothesised +5 points over the baseline's 41.7%.
    let n5 =
        stats::n_per_arm_for_fisher_power(5.0 / 12.0, 5.0 / 12.0 + 0.05, 0.05, 0.8, 5000).unwrap();
    assert!(
        md.contains(&format!(
            "| hypothesised +5 over base | 41.7% → 46.7% | {n5} | 12 |"
        )),
        "{md}"
    );
    assert!(md.contains("| template | 4 | 0 | zero samples"));
    // The experiment name is escaped, not markup.
    assert!(
        md.starts_with("# Report: tdd &lt;test> & \"friends\""),
        "{md}"
    );
}

#[test]
fn html_is_well_formed_self_contained_and_traceable() {
    let r = render(&input());
    let html = text(&r, "report.html");
    let ids = check_html(
        &html,
        &[
            "chart-rates",
            "chart-delta",
            "chart-heatmap",
            "chart-retries",
            "chart-durations",
            "chart-loss",
        ],
    );
    for t in ["stack", "lru_cache", "template"] {
        for a in ["base", "finetuned"] {
            assert!(ids.contains(&format!("trials-{t}-{a}")));
            assert!(
                html.contains(&format!("href=\"#trials-{t}-{a}\"")),
                "no link to {t}-{a}"
            );
        }
    }
    assert!(html.contains("<code>pipe show trial/stack/base/0</code>"));
    assert!(html.contains("eval/template/finetuned/3 ✗ impl"));
    assert!(html.contains("trial/stack/base/0 ✓"));
    assert!(html.contains("published (Thompson 2025) — not measured here"));
    assert!(html.contains("<title>Report: tdd &lt;test&gt; &amp; &quot;friends&quot;</title>"));
}

#[test]
fn csv_and_json_read_back() {
    let inp = input();
    let r = render(&inp);
    let mut rd = csv::Reader::from_reader(r.get("trials.csv").unwrap());
    let head: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(head[..5], ["task", "arm", "index", "stage", "success"]);
    assert!(head.contains(&"transcript".to_string()) && head.contains(&"id".to_string()));
    let rows: Vec<csv::StringRecord> = rd.records().map(|x| x.unwrap()).collect();
    assert_eq!(rows.len(), inp.trials.len());
    let col = |name: &str| head.iter().position(|h| h == name).unwrap();
    let failed = rows
        .iter()
        .find(|r| &r[col("id")] == "template/base/0")
        .unwrap();
    assert_eq!(&failed[col("success")], "false");
    assert_eq!(&failed[col("retries_impl")], "", "None is an empty cell");
    assert_eq!(&failed[col("test_strength")], "");
    assert_eq!(failed[col("duration_s")].parse::<f64>().unwrap(), 5.0);
    assert_eq!(failed[col("transcript")].len(), 64);
    // Raw bytes: header + one line per trial, CRLF.
    let raw = text(&r, "trials.csv");
    assert_eq!(
        raw.split("\r\n").filter(|l| !l.is_empty()).count(),
        inp.trials.len() + 1
    );

    let lines: Vec<serde_json::Value> = text(&r, "trials.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), inp.trials.len());
    assert_eq!(lines[0]["id"], "stack/base/0");
    assert!(lines.iter().any(|l| l["retries_tests"].is_null()));

    let mut rd = csv::Reader::from_reader(r.get("summary.csv").unwrap());
    let head: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    let rows: Vec<csv::StringRecord> = rd.records().map(|x| x.unwrap()).collect();
    assert_eq!(
        rows.len(),
        3 * 2 + 2,
        "task × arm rows and one overall row per arm"
    );
    let col = |name: &str| head.iter().position(|h| h == name).unwrap();
    let overall = rows
        .iter()
        .find(|r| &r[0] == "overall" && &r[1] == "base")
        .unwrap();
    assert_eq!(&overall[col("n")], "12");
    assert_eq!(&overall[col("successes")], "5");
    let (lo, _) = stats::wilson(5, 12, 0.95);
    // Rounded to 6 decimals: no binary noise in the file.
    let got = overall[col("wilson_lo")].parse::<f64>().unwrap();
    assert!((got - lo).abs() <= 5e-7, "{got} vs {lo}");
    for r in &rows {
        for v in r.iter() {
            if let Some((_, frac)) = v.split_once('.') {
                assert!(frac.len() <= 6, "float noise in summary.csv: {v}");
            }
        }
    }

    let s: serde_json::Value = serde_json::from_slice(r.get("summary.json").unwrap()).unwrap();
    assert_eq!(s["rows"].as_array().unwrap().len(), 8);
    assert_eq!(s["comparisons"].as_array().unwrap().len(), 4);
    assert!(!s["cannot_conclude"].as_array().unwrap().is_empty());
}

#[test]
fn deterministic_whatever_the_trial_order() {
    let a = render(&input());
    let b = render(&input());
    assert_eq!(a, b);
    let mut shuffled = input();
    shuffled.trials.reverse();
    shuffled.trials.swap(3, 17);
    assert_eq!(render(&shuffled), a);
    let names: Vec<&str> = a.files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "report.md",
            "report.html",
            "trials.csv",
            "trials.jsonl",
            "summary.csv",
            "summary.json"
        ]
    );
}

#[test]
fn zero_trials() {
    let mut inp = input();
    inp.trials.clear();
    inp.extract = None;
    inp.training = None;
    let r = render(&inp);
    let md = text(&r, "report.md");
    assert!(md.contains("No trials yet: nothing can be concluded"));
    assert!(md.contains("The extract stage has not been built"));
    let html = text(&r, "report.html");
    let doc = parse(&html);
    for id in [
        "chart-rates",
        "chart-delta",
        "chart-heatmap",
        "chart-retries",
        "chart-durations",
    ] {
        assert!(
            doc.descendants().any(|n| n.attribute("id") == Some(id)),
            "{id}"
        );
    }
    assert!(
        !html.contains("chart-loss"),
        "no loss chart without training"
    );
    assert!(!html.contains("chart unavailable"));
    assert_eq!(text(&r, "trials.csv").lines().count(), 1, "header only");
    assert_eq!(text(&r, "trials.jsonl"), "");
    // No tasks and no arms at all.
    let empty = ReportInput {
        experiment: String::new(),
        tasks: vec![],
        arms: vec![],
        trials: vec![],
        extract: None,
        training: None,
        provenance: None,
    };
    let r = render(&empty);
    parse(&text(&r, "report.html"));
    assert!(text(&r, "report.md").contains("Only one arm (none): no comparison"));
}

#[test]
fn one_arm_only_still_sizes_the_next_run() {
    let mut inp = input();
    inp.arms.truncate(1);
    inp.trials.retain(|t| t.arm == "base");
    let r = render(&inp);
    let md = text(&r, "report.md");
    assert!(md.contains("Only one arm (base): no comparison"));
    assert!(md.contains("Only one arm: no comparison."));
    let n5 =
        stats::n_per_arm_for_fisher_power(5.0 / 12.0, 5.0 / 12.0 + 0.05, 0.05, 0.8, 5000).unwrap();
    assert!(
        md.contains(&format!(
            "| base | hypothesised +5 over base | 41.7% → 46.7% | {n5} | 12 |"
        )),
        "{md}"
    );
    assert!(md.contains(&format!("needs about {n5} trials per arm")));
    let html = text(&r, "report.html");
    check_html(
        &html,
        &[
            "chart-rates",
            "chart-heatmap",
            "chart-retries",
            "chart-durations",
            "chart-loss",
        ],
    );
    assert!(!html.contains("id=\"chart-delta\""));
}

#[test]
fn unlisted_tasks_and_arms_are_reported_not_dropped() {
    let mut inp = input();
    inp.trials
        .push(trial("queue", "base", 0, true, (0, 0), 3.0));
    inp.trials
        .push(trial("stack", "mystery", 0, false, (0, 0), 3.0));
    let r = render(&inp);
    let md = text(&r, "report.md");
    assert!(md.contains("Trials name tasks not in the config (queue)"));
    assert!(md.contains("Trials name arms not in the config (mystery)"));
    check_html(&text(&r, "report.html"), &["chart-rates"]);
    assert_eq!(text(&r, "trials.jsonl").lines().count(), inp.trials.len());
}

#[test]
fn charts_survive_extreme_cells() {
    // All passed, with every duration equal.
    let mut all = input();
    for t in &mut all.trials {
        t.passed = true;
        t.failed_step = None;
        t.retries_tests = Some(0);
        t.retries_impl = Some(0);
        t.duration_ms = 4000;
    }
    // None passed; an empty cell; one task; zero durations; a NaN loss.
    let mut none = input();
    none.tasks.truncate(1);
    none.trials
        .retain(|t| t.task == "stack" && !(t.arm == "finetuned" && t.index > 0));
    none.trials.retain(|t| t.arm == "base");
    for t in &mut none.trials {
        t.passed = false;
        t.duration_ms = 0;
    }
    if let Some(tr) = &mut none.training {
        tr.loss[3].1 = f64::NAN;
        tr.val_loss.clear();
    }
    for (inp, name) in [(all, "all passed"), (none, "none passed")] {
        let r = render(&inp);
        let html = text(&r, "report.html");
        parse(&html);
        assert!(!html.contains("chart unavailable"), "{name}");
    }
}

#[test]
fn large_input_renders_and_parses() {
    let mut inp = input();
    inp.trials.clear();
    for (t, _, _) in PASSES {
        for a in ["base", "finetuned"] {
            for i in 0..300u32 {
                inp.trials.push(trial(
                    t,
                    a,
                    i,
                    i % 3 != 0,
                    (i % 4, (i / 4) % 4),
                    (i % 17) as f64,
                ));
            }
        }
    }
    let r = render(&inp);
    let html = text(&r, "report.html");
    check_html(&html, &["chart-rates", "chart-delta", "chart-durations"]);
    assert!(
        html.len() < 1_000_000,
        "{} bytes for 1,800 trials",
        html.len()
    );
    let md = text(&r, "report.md");
    assert!(!md.contains("Fewer than 10 trials"));
}

#[test]
fn fine_tuned_arm_not_run_yet() {
    let mut inp = input();
    inp.trials.retain(|t| t.arm == "base");
    let r = render(&inp);
    let md = text(&r, "report.md");
    assert!(md.contains(
        "No trials yet for arm finetuned: every rate and comparison involving it is empty"
    ));
    assert!(
        !md.contains("No trials for stack × finetuned"),
        "listed once per arm, not per cell"
    );
    // The +5-point sizing still shows, from the baseline's rate.
    assert!(md.contains("| base → finetuned | hypothesised +5 over base | 41.7% → 46.7% |"));
    check_html(
        &text(&r, "report.html"),
        &["chart-rates", "chart-heatmap", "chart-durations"],
    );
}

#[test]
fn several_baselines_compare_every_pair_in_order() {
    let mut inp = input();
    inp.arms.insert(0, arm("q14", "baseline"));
    for (t, _, _) in PASSES {
        for i in 0..4 {
            inp.trials.push(trial(t, "q14", i, true, (0, 0), 9.0));
        }
    }
    let r = render(&inp);
    let md = text(&r, "report.md");
    let headings: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("### ") && !l.starts_with("### Per task"))
        .collect();
    assert_eq!(
        headings,
        [
            "### q14 → finetuned",
            "### base → finetuned",
            "### q14 → base"
        ],
        "baseline × fine-tuned pairs first, then the other pairs, each as earlier → later"
    );
    // q14 → base overall: 12/12 → 5/12, Δ later − earlier.
    let p = stats::fisher_exact_two_sided(12, 0, 5, 7);
    let row = md
        .lines()
        .find(|l| l.starts_with("| overall | 12/12 (100.0%) | 5/12 (41.7%) |"))
        .expect("q14 → base overall row");
    assert!(
        row.contains(&format!("| -58.3 | {p:.4} {} |", stats::stars(p))),
        "{row}"
    );
    check_html(
        &text(&r, "report.html"),
        &["chart-rates", "chart-delta", "chart-retries"],
    );
}

#[test]
fn hostile_names_stay_text() {
    let mut inp = input();
    let evil_task = "a|b<c>&d-e \"f\" [x](y) *z*";
    let evil_arm = "base-1 & <b>";
    inp.tasks
        .push(task(evil_task, "Evil | name\nwith a break", "?"));
    inp.arms[0].name = evil_arm.into();
    for t in &mut inp.trials {
        if t.arm == "base" {
            t.arm = evil_arm.into();
        }
    }
    inp.trials
        .push(trial(evil_task, "finetuned", 0, true, (1000, 7), 1.0));
    inp.trials[0].failed_step = Some("<script>".into());
    inp.trials[0].passed = false;
    let r = render(&inp);
    let html = text(&r, "report.html");
    let ids = check_html(&html, &["chart-rates", "chart-heatmap", "chart-retries"]);
    assert!(
        ids.contains("trials-a.7cb.3cc.3e.26d.2de.20.22f.22.20.5bx.5d.28y.29.20.2az.2a-finetuned")
    );
    assert!(!html.contains("<b>"));
    // Every Markdown table row has as many cells as its header.
    let md = text(&r, "report.md");
    let mut width = 0;
    for l in md.lines() {
        if !l.starts_with('|') {
            width = 0;
            continue;
        }
        let cells = l.replace("\\|", "").matches('|').count();
        if width == 0 {
            width = cells;
        }
        assert_eq!(cells, width, "row splits differently from its header: {l}");
    }
    assert!(md.contains("Evil \\| name with a break"));
    // R far above rmax is shown in the last (capped) column, not a crash.
    assert!(md.contains("R≥32"));
    let mut rd = csv::Reader::from_reader(r.get("trials.csv").unwrap());
    assert!(rd.records().all(|x| x.unwrap().len() == 18));
}

#[test]
fn training_says_how_much_it_learned_from_or_why_it_did_not_train() {
    let mut inp = input();
    let r = render(&inp);
    let md = text(&r, "report.md");
    assert!(
        md.contains("Trained on 40 samples (4 held out for validation)."),
        "{md}"
    );
    assert!(!md.contains("That is few"), "40 is not few");
    inp.training.as_mut().unwrap().samples = 3;
    let md = text(&render(&inp), "report.md");
    assert!(
        md.contains("Trained on 3 samples") && md.contains("That is few"),
        "{md}"
    );
    let tr = inp.training.as_mut().unwrap();
    tr.skipped = Some("extract kept no sample".into());
    tr.loss.clear();
    tr.val_loss.clear();
    let r = render(&inp);
    let md = text(&r, "report.md");
    assert!(
        md.contains(
            "No adapter was trained: extract kept no sample. So there is no fine-tuned model"
        ),
        "{md}"
    );
    let html = text(&r, "report.html");
    parse(&html);
    assert!(!html.contains("chart-loss"), "no curve without training");
}

#[test]
fn the_published_overall_is_pooled_over_the_tasks_run() {
    // stack, lru_cache, template: 14B (88+66+68)/3 = 74, 7B (94+50+20)/3 ≈ 55, 3B ≈ 25.
    let md = text(&render(&input()), "report.md");
    let row = md
        .lines()
        .find(|l| l.starts_with("| overall (3 tasks) |"))
        .unwrap_or_else(|| panic!("{md}"));
    assert!(row.ends_with("| 74% | 55% | 25% | 62% |"), "{row}");
    assert!(md.contains("pooled over the 3 tasks run here"));
    // All six: the paper's own overall row.
    let mut all = input();
    for (id, name) in [
        ("queue", "Queue"),
        ("calculator", "Calculator"),
        ("password", "Password"),
    ] {
        all.tasks.push(task(id, name, "easy"));
    }
    let md = text(&render(&all), "report.md");
    let row = md
        .lines()
        .find(|l| l.starts_with("| overall |") && l.contains("64 ± 3%"))
        .unwrap_or_else(|| panic!("{md}"));
    assert!(row.ends_with("| 70% | 57% | 36% | 64 ± 3% |"), "{row}");
}

/// An attempt of a transcript, for the tests below.
fn attempt(step: &str, retry: u32, passed: bool, cause: Option<Cause>, bytes: usize) -> AttemptRow {
    AttemptRow {
        step: step.into(),
        retry,
        prompt: format!("Write {step} <please> & thanks\n{}", "p".repeat(bytes)),
        reply: format!("```python\nreply {retry}\n```\n{}", "r".repeat(bytes)),
        code: format!("code {retry}"),
        passed,
        feedback: if passed {
            String::new()
        } else {
            "E   NameError: name 'pytest' is not defined".into()
        },
        cause,
        finish_reason: Some(
            if cause == Some(Cause::Truncated) {
                "length"
            } else {
                "stop"
            }
            .into(),
        ),
        prompt_tokens: Some(100),
        completion_tokens: Some(50),
        model_ms: 1500,
        guard_ms: 200,
    }
}

/// Failures with known causes: each number of the cause table is what was put in; the
/// truncation rate counts requests; the primary comparison is named up front; exploratory
/// tests carry Holm's p and the stratified test matches the statistics module.
#[test]
fn failure_causes_primary_comparison_holm_and_cmh() {
    let mut inp = input();
    // base: stack's one failure is a NameError, lru_cache's two are a truncation and a
    // syntax error at the tests step; every finetuned failure stays an assertion.
    for t in inp
        .trials
        .iter_mut()
        .filter(|t| t.arm == "base" && !t.passed)
    {
        match (t.task.as_str(), t.index) {
            ("stack", _) => t.cause = Some(Cause::NameError),
            ("lru_cache", 2) => {
                t.cause = Some(Cause::Truncated);
                t.truncated = 2;
            }
            ("lru_cache", _) => {
                t.failed_step = Some("tests".into());
                t.cause = Some(Cause::Syntax);
            }
            _ => {}
        }
    }
    let r = render(&inp);
    let md = text(&r, "report.md");
    let row = |prefix: &str| {
        md.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no row {prefix}"))
            .split('|')
            .map(|c| c.trim().to_string())
            .collect::<Vec<_>>()
    };
    let head = row("| Arm | Task | failed |");
    let col = |name: &str| {
        head.iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    let stack = row("| base | stack | 1/4 |");
    assert_eq!(stack[col("NameError")], "1");
    assert_eq!(stack[col("at impl")], "1");
    let lru = row("| base | lru_cache | 2/4 |");
    assert_eq!(lru[col("truncated reply")], "1");
    assert_eq!(lru[col("syntax error")], "1");
    assert_eq!(lru[col("at tests")], "1");
    // Requests: 2 truncated out of every attempt of the cell.
    let attempts: u32 = inp
        .trials
        .iter()
        .filter(|t| t.task == "lru_cache" && t.arm == "base")
        .map(|t| t.tests_attempts + t.impl_attempts)
        .sum();
    assert!(
        lru[col("truncated replies")].starts_with(&format!("2/{attempts} (")),
        "{lru:?}"
    );
    let overall = row("| base | overall | 7/12 |");
    assert_eq!(
        overall[col("assertion failed")],
        "4",
        "template's four: {overall:?}"
    );

    // Up front: the question, the primary comparison and its verdict.
    let q = md.find("## Question and setup").expect("question section");
    assert!(q < md.find("## Overview").unwrap());
    assert!(
        md.contains("**Primary comparison:** base → finetuned, overall"),
        "{md}"
    );
    // Holm over the three per-task tests (the overall one is primary).
    let ps: Vec<f64> = PASSES
        .iter()
        .map(|(_, b, f)| {
            stats::fisher_exact_two_sided(*b as u64, 4 - *b as u64, *f as u64, 4 - *f as u64)
        })
        .collect();
    let holm = stats::holm(&ps);
    for ((t, ..), h) in PASSES.iter().zip(&holm) {
        let cells = row(&format!("| {t} | "));
        assert_eq!(cells[cells.len() - 2], format!("{h:.4}"), "{t}: {cells:?}");
    }
    let primary = row("| overall (primary) | 5/12 ");
    assert_eq!(
        primary[primary.len() - 2],
        "–",
        "the primary test is not adjusted"
    );
    let tables: Vec<(u64, u64, u64, u64)> = PASSES
        .iter()
        .map(|(_, b, f)| (*b as u64, 4 - *b as u64, *f as u64, 4 - *f as u64))
        .collect();
    let m = stats::cochran_mantel_haenszel(&tables).unwrap();
    assert!(
        md.contains(&format!("χ² = {:.3}, p = {:.4}", m.chi2, m.p)),
        "CMH line missing"
    );
    let s: serde_json::Value = serde_json::from_slice(r.get("summary.json").unwrap()).unwrap();
    assert!((s["stratified_by_task"][0]["p"].as_f64().unwrap() - m.p).abs() < 1e-12);
    let csv = text(&r, "summary.csv");
    assert!(csv.lines().next().unwrap().contains("cause_name_error"));
}

/// Transcripts sit in the page, one collapsible trial each, reachable from its cell's list
/// (always open), with a filter to failures; too large, they move to one page per task × arm.
#[test]
fn transcripts_in_the_page_or_beside_it() {
    let mut inp = input();
    for t in &mut inp.trials {
        t.attempts = vec![
            attempt("tests", 0, true, None, 10),
            attempt(
                "impl",
                0,
                t.passed,
                (!t.passed).then_some(Cause::NameError),
                10,
            ),
        ];
    }
    let r = render(&inp);
    assert!(!r.files.iter().any(|(n, _)| n.starts_with("transcripts")));
    let html = text(&r, "report.html");
    let doc = parse(&html);
    let li = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("t-stack-base-0"))
        .expect("trial 0 has an anchor (ids count from 0)");
    assert!(li.has_tag_name("li"));
    let inner: String = li.descendants().filter_map(|n| n.text()).collect();
    assert!(
        inner.contains("Write tests <please> & thanks"),
        "prompt escaped and kept"
    );
    assert!(inner.contains("R=0"));
    // The cell list a rate links to is a plain container, open without a click.
    let cell = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("trials-stack-base"))
        .unwrap();
    assert!(cell.has_tag_name("div"));
    assert!(html.contains("id=\"only-failed\""));
    assert!(html.contains("body:has(#only-failed:checked) li.trial.y{display:none}"));

    // 10 MB of transcript: a sibling file, linked trial by trial.
    for t in &mut inp.trials {
        t.attempts = vec![attempt("tests", 0, true, None, 220_000)];
    }
    let r = render(&inp);
    let page = text(&r, "transcripts-stack-base.html");
    let pages = r
        .files
        .iter()
        .filter(|(n, _)| n.starts_with("transcripts-"))
        .count();
    assert_eq!(pages, 3 * 2, "one page per task × arm");
    let html = text(&r, "report.html");
    assert!(
        html.len() < 1 << 20,
        "report.html stays small: {}",
        html.len()
    );
    assert!(html.contains("href=\"transcripts-stack-base.html#t-stack-base-0\""));
    let sib = parse(&page);
    assert!(
        sib.descendants()
            .any(|n| n.attribute("id") == Some("t-stack-base-0"))
    );
}

/// A baseline study says so and never talks as if a model had been fine-tuned.
#[test]
fn a_baseline_study_says_it_is_one() {
    let mut inp = input();
    inp.arms.retain(|a| a.role == "baseline");
    inp.trials.retain(|t| t.arm == "base");
    let md = text(&render(&inp), "report.md");
    assert!(md.contains("This is a baseline study"), "{md}");
    assert!(!md.contains("not from task-specific training"));
}
