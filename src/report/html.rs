//! `report.html`: one self-contained, well-formed XHTML5 (polyglot) page — inline CSS, inline
//! SVG charts, no script, no external resource — where every count links to its trials.

use super::analysis::Analysis;
use super::fmt::{arm_id, cell_id, esc, trial_id};
use super::sections::{Block, Doc, Inline};
use std::fmt::Write as _;

const CSS: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fff;line-height:1.45}
header,main{max-width:1200px;margin:0 auto;padding:0 1rem}
h1{font-size:1.6rem;margin:1rem 0 .3rem}
h2{font-size:1.3rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1.05rem;margin:1.2rem 0 .4rem}
nav ul{list-style:none;padding:0;margin:.3rem 0;display:flex;flex-wrap:wrap;gap:.3rem 1rem;font-size:.9rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem;display:block;overflow-x:auto;max-width:100%;background:linear-gradient(to right,#fff 30%,rgba(255,255,255,0)),linear-gradient(to right,rgba(255,255,255,0),#fff 70%) 100% 0,radial-gradient(farthest-side at 0 50%,rgba(0,0,0,.25),rgba(0,0,0,0)),radial-gradient(farthest-side at 100% 50%,rgba(0,0,0,.25),rgba(0,0,0,0)) 100% 0;background-repeat:no-repeat;background-size:40px 100%,40px 100%,14px 100%,14px 100%;background-attachment:local,local,scroll,scroll}
th,td{border:1px solid #d5d5d5;padding:.2rem .45rem;vertical-align:top}
th{background:#f3f4f6;text-align:left}
td.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
a{color:#1f5fbf;text-decoration:none}
a:hover{text-decoration:underline}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em;background:#f3f4f6;padding:0 .2em}
figure{margin:1rem 0;overflow-x:auto;max-width:100%}
figure svg{max-width:none;height:auto;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}
#sec-cannot li{margin:.2rem 0}
details{margin:.1rem 0}
summary{cursor:pointer}
h4{font-size:.95rem;margin:.8rem 0 .2rem}
ul.tl{list-style:none;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.8rem;margin:.2rem 0;padding-left:.5rem}
li.y>details>summary,li.y>a,li.trial.y{color:#1a7f37}
li.n>details>summary,li.n>a,li.trial.n{color:#b42318}
ol.att{color:#1b1b1b;padding-left:1.6rem;margin:.2rem 0 .6rem}
ol.att>li{margin:.3rem 0}
.ah{font-weight:600}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f8fa;border:1px solid #e5e7eb;padding:.4rem;margin:.2rem 0;font-size:.78rem;max-height:30rem;overflow:auto}
body:has(#only-failed:checked) li.trial.y{display:none}
.filter{position:sticky;top:0;background:#fff;padding:.3rem 0;margin:0}
.muted{color:#666}
.wide-hint{display:none;font-size:.8rem;color:#666}
@media (max-width:700px){.wide-hint{display:block}}
";

/// A page's start, up to and including `<body>`: the same markup and styles for the report and
/// its transcript pages.
fn head(out: &mut String, title: &str) {
    out.push_str("<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\" xml:lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\n");
    let _ = writeln!(out, "<title>{}</title>", esc(title));
    let _ = writeln!(out, "<style>{CSS}</style>\n</head>\n<body>");
}

/// The "failed trials only" switch (CSS `:has`, no script).
const FILTER: &str = "<p class=\"filter\"><label><input type=\"checkbox\" id=\"only-failed\"/> show failed trials only</label></p>\n";

fn inline(out: &mut String, parts: &[Inline]) {
    for p in parts {
        match p {
            Inline::Text(s) => out.push_str(&esc(s)),
            Inline::Code(s) => {
                let _ = write!(out, "<code>{}</code>", esc(s));
            }
            Inline::Strong(s) => {
                let _ = write!(out, "<strong>{}</strong>", esc(s));
            }
            Inline::Link(s, id) => {
                let _ = write!(out, "<a href=\"#{}\">{}</a>", esc(id), esc(s));
            }
        }
    }
}

pub fn render(a: &Analysis, doc: &Doc) -> String {
    let mut out = String::with_capacity(64 * 1024 + a.input.trials.len() * 64);
    let title = format!("Report: {}", a.input.experiment);
    head(&mut out, &title);
    out.push_str("<header>\n");
    let _ = writeln!(out, "<h1>{}</h1>", esc(&title));
    out.push_str("<nav id=\"toc\"><ul>");
    for s in &doc.sections {
        let _ = write!(out, "<li><a href=\"#{}\">{}</a></li>", s.id, esc(&s.title));
    }
    out.push_str("</ul></nav>\n</header>\n<main>\n");
    for s in &doc.sections {
        let _ = writeln!(out, "<section id=\"{}\">\n<h2>{}</h2>", s.id, esc(&s.title));
        for b in &s.blocks {
            match b {
                Block::Para(p) => {
                    out.push_str("<p>");
                    inline(&mut out, p);
                    out.push_str("</p>\n");
                }
                Block::Heading(h) => {
                    let _ = writeln!(out, "<h3>{}</h3>", esc(h));
                }
                Block::List(items) => {
                    out.push_str("<ul>\n");
                    for i in items {
                        out.push_str("<li>");
                        inline(&mut out, i);
                        out.push_str("</li>\n");
                    }
                    out.push_str("</ul>\n");
                }
                Block::Table(t) => {
                    out.push_str("<table>\n<thead><tr>");
                    for h in &t.head {
                        let _ = write!(out, "<th>{}</th>", esc(h));
                    }
                    out.push_str("</tr></thead>\n<tbody>\n");
                    for r in &t.rows {
                        out.push_str("<tr>");
                        for c in r {
                            out.push_str(if c.num { "<td class=\"n\">" } else { "<td>" });
                            inline(&mut out, &c.parts);
                            out.push_str("</td>");
                        }
                        out.push_str("</tr>\n");
                    }
                    out.push_str("</tbody>\n</table>\n");
                }
                Block::Chart(c) => {
                    let _ = writeln!(out, "<figure id=\"{}\" class=\"chart\">", c.id);
                    out.push_str(
                        "<p class=\"wide-hint\">Wider than the screen: scroll sideways.</p>\n",
                    );
                    out.push_str(&c.svg);
                    let _ = writeln!(
                        out,
                        "<figcaption>{}</figcaption>\n</figure>",
                        esc(&c.caption)
                    );
                }
                Block::TrialLists => trial_lists(&mut out, a),
            }
        }
        out.push_str("</section>\n");
    }
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

/// Above this many bytes of transcript text the transcripts leave `report.html` for one sibling
/// page per task × arm (`transcripts-<task>-<arm>.html`): a browser opens a page of a few MB at
/// once, the 300 MB of 10,000 trials' transcripts never. Below it the report stays one
/// self-contained file.
pub const INLINE_TRANSCRIPTS: usize = 8 << 20;

/// Where the transcripts go.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transcripts {
    /// Inside `report.html`, each trial collapsible.
    Inline,
    /// In one page per task × arm beside the report, which the trial lists link to.
    Sibling,
}

/// Where the transcripts of `a` go.
pub fn placement(a: &Analysis) -> Transcripts {
    let bytes: usize = a
        .input
        .trials
        .iter()
        .flat_map(|t| &t.attempts)
        .map(|x| x.prompt.len() + x.reply.len() + x.code.len() + x.feedback.len())
        .sum();
    if bytes > INLINE_TRANSCRIPTS {
        Transcripts::Sibling
    } else {
        Transcripts::Inline
    }
}

fn trial_lists(out: &mut String, a: &Analysis) {
    let place = placement(a);
    out.push_str(FILTER);
    if place == Transcripts::Sibling {
        out.push_str("<p class=\"muted\">The transcripts are too large for this page: each trial links to its transcript in a page of its task and arm beside this file (<code>transcripts-&lt;task&gt;-&lt;arm&gt;.html</code>).</p>\n");
    }
    for (ai, arm) in a.arms.iter().enumerate() {
        let o = &a.overall[ai];
        let _ = writeln!(
            out,
            "<section id=\"{}\">\n<h3>{} <span class=\"muted\">({}, {}): {}/{} passed</span></h3>",
            arm_id(&arm.name),
            esc(&arm.name),
            esc(&arm.role),
            esc(&arm.model),
            o.successes,
            o.n
        );
        for (ti, task) in a.tasks.iter().enumerate() {
            let c = &a.cells[ti][ai];
            let _ = writeln!(
                out,
                "<div class=\"cell\" id=\"{}\"><h4>{} × {}: {}/{} passed</h4>",
                cell_id(&task.id, &arm.name),
                esc(&task.id),
                esc(&arm.name),
                c.successes,
                c.n
            );
            if c.trials.is_empty() {
                out.push_str("<p class=\"muted\">No trials.</p>\n");
            } else {
                out.push_str("<ul class=\"tl\">\n");
                for t in &c.trials {
                    trial_item(out, t, place);
                }
                out.push_str("</ul>\n");
            }
            out.push_str("</div>\n");
        }
        out.push_str("</section>\n");
    }
}

/// One trial's line: its id, ✓/✗, the failing step and cause; its transcript collapsed under
/// it (or a link to it).
fn trial_item(out: &mut String, t: &super::TrialRow, place: Transcripts) {
    let (class, mark) = if t.passed { ("y", "✓") } else { ("n", "✗") };
    let id = trial_id(&t.task, &t.arm, t.index);
    let mut head = format!("{}/{} {mark}", esc(&t.stage), esc(&t.id));
    if !t.passed {
        if let Some(step) = t.failed_step.as_deref() {
            let _ = write!(head, " {}", esc(step));
        }
        if let Some(c) = t.cause {
            let _ = write!(head, ": {}", esc(c.label()));
        }
    }
    let _ = write!(
        head,
        " <span class=\"muted\">({} s)</span>",
        secs(t.duration_ms)
    );
    match (place, t.attempts.is_empty()) {
        (_, true) => {
            let _ = writeln!(out, "<li class=\"trial {class}\" id=\"{id}\">{head}</li>");
        }
        (Transcripts::Sibling, false) => {
            let _ = writeln!(
                out,
                "<li class=\"trial {class}\" id=\"{id}\"><a href=\"{}#{id}\">{head}</a></li>",
                transcripts_file(&t.task, &t.arm)
            );
        }
        (Transcripts::Inline, false) => {
            let _ = writeln!(
                out,
                "<li class=\"trial {class}\" id=\"{id}\"><details><summary>{head}</summary>"
            );
            transcript(out, t);
            out.push_str("</details></li>\n");
        }
    }
}

fn secs(ms: u64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

/// A trial's attempts: each with its verdict, tokens and times, and its prompt, reply, code and
/// feedback collapsible.
fn transcript(out: &mut String, t: &super::TrialRow) {
    out.push_str("<ol class=\"att\" start=\"0\">\n");
    for x in &t.attempts {
        let verdict = if x.passed {
            "✓ accepted".to_string()
        } else {
            format!("✗ {}", x.cause.map_or("rejected", |c| c.label()))
        };
        let tokens = match (x.prompt_tokens, x.completion_tokens) {
            (Some(p), Some(c)) => format!("{p} + {c} tokens"),
            _ => "tokens not reported".into(),
        };
        let _ = writeln!(
            out,
            "<li class=\"{}\"><span class=\"ah\">{} · R={} · {} · {} · model {} s · guard {} s{}</span>",
            if x.passed { "y" } else { "n" },
            esc(&x.step),
            x.retry,
            esc(&verdict),
            tokens,
            secs(x.model_ms),
            secs(x.guard_ms),
            match x.finish_reason.as_deref() {
                Some("length") => " · cut off at max_tokens".to_string(),
                _ => String::new(),
            }
        );
        block(out, "prompt", &x.prompt);
        block(out, "reply", &x.reply);
        if x.code.trim() != x.reply.trim() {
            block(out, "code taken from the reply", &x.code);
        }
        if !x.feedback.is_empty() {
            block(out, "guard feedback", &x.feedback);
        }
        out.push_str("</li>\n");
    }
    out.push_str("</ol>\n");
}

fn block(out: &mut String, what: &str, text: &str) {
    let _ = writeln!(
        out,
        "<details><summary>{what} ({} lines)</summary><pre>{}</pre></details>",
        text.lines().count(),
        esc(text)
    );
}

/// The page holding the transcripts of one task × arm, when they do not fit in the report.
pub fn transcripts_file(task: &str, arm: &str) -> String {
    format!(
        "transcripts-{}.html",
        cell_id(task, arm).trim_start_matches("trials-")
    )
}

/// The transcript pages, when the transcripts do not fit in the report: one per task × arm
/// with trials, as (file name, page).
pub fn transcript_pages(a: &Analysis) -> Vec<(String, String)> {
    let mut pages = Vec::new();
    for (ai, arm) in a.arms.iter().enumerate() {
        for (ti, task) in a.tasks.iter().enumerate() {
            let c = &a.cells[ti][ai];
            if c.trials.is_empty() {
                continue;
            }
            let mut out = String::new();
            let title = format!(
                "Transcripts: {} × {} ({})",
                task.id, arm.name, a.input.experiment
            );
            head(&mut out, &title);
            out.push_str("<main>\n");
            let _ = writeln!(
                out,
                "<h1>{}</h1>\n<p><a href=\"report.html#{}\">back to the report</a> · {}/{} passed</p>",
                esc(&title),
                cell_id(&task.id, &arm.name),
                c.successes,
                c.n
            );
            out.push_str(FILTER);
            out.push_str("<ul class=\"tl\">\n");
            for t in &c.trials {
                trial_item(&mut out, t, Transcripts::Inline);
            }
            out.push_str("</ul>\n</main>\n</body>\n</html>\n");
            pages.push((transcripts_file(&task.id, &arm.name), out));
        }
    }
    pages
}
