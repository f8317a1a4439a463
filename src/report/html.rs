//! `report.html`: one self-contained, well-formed XHTML5 (polyglot) page — inline CSS, inline
//! SVG charts, no script, no external resource — where every count links to its trials.

use super::analysis::Analysis;
use super::fmt::{arm_id, cell_id, esc};
use super::sections::{Block, Doc, Inline};
use std::fmt::Write as _;

const CSS: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fff;line-height:1.45}
header,main{max-width:1200px;margin:0 auto;padding:0 1rem}
h1{font-size:1.6rem;margin:1rem 0 .3rem}
h2{font-size:1.3rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1.05rem;margin:1.2rem 0 .4rem}
nav ul{list-style:none;padding:0;margin:.3rem 0;display:flex;flex-wrap:wrap;gap:.3rem 1rem;font-size:.9rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #d5d5d5;padding:.2rem .45rem;vertical-align:top}
th{background:#f3f4f6;text-align:left}
td.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
a{color:#1f5fbf;text-decoration:none}
a:hover{text-decoration:underline}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em;background:#f3f4f6;padding:0 .2em}
figure{margin:1rem 0}
figure svg{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}
#sec-cannot li{margin:.2rem 0}
details{margin:.2rem 0 .2rem 1rem}
summary{cursor:pointer}
ol.tl{columns:18rem;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.78rem;margin:.2rem 0;padding-left:2.2rem}
li.y{color:#1a7f37}
li.n{color:#b42318}
.muted{color:#666}
";

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
    out.push_str("<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\" xml:lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\n");
    let _ = writeln!(out, "<title>{}</title>", esc(&title));
    let _ = writeln!(out, "<style>{CSS}</style>\n</head>\n<body>\n<header>");
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

fn trial_lists(out: &mut String, a: &Analysis) {
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
                "<details id=\"{}\"><summary>{} × {}: {}/{} passed</summary>",
                cell_id(&task.id, &arm.name),
                esc(&task.id),
                esc(&arm.name),
                c.successes,
                c.n
            );
            match c.trials.first() {
                None => out.push_str("<p class=\"muted\">No trials.</p>\n"),
                Some(first) => {
                    let _ = writeln!(
                        out,
                        "<p>Transcripts: <code>pipe show {}/{}</code> (or any id below)</p>",
                        esc(&first.stage),
                        esc(&first.id)
                    );
                    out.push_str("<ol class=\"tl\">\n");
                    for t in &c.trials {
                        let (class, mark) = if t.passed { ("y", "✓") } else { ("n", "✗") };
                        let _ = write!(
                            out,
                            "<li class=\"{class}\">{}/{} {mark}",
                            esc(&t.stage),
                            esc(&t.id)
                        );
                        if let Some(step) = t.failed_step.as_deref().filter(|_| !t.passed) {
                            let _ = write!(out, " {}", esc(step));
                        }
                        out.push_str("</li>\n");
                    }
                    out.push_str("</ol>\n");
                }
            }
            out.push_str("</details>\n");
        }
        out.push_str("</section>\n");
    }
}
