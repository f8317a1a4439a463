//! `report.md`: the document as Markdown tables (charts and per-trial links live in
//! `report.html`).

use super::analysis::Analysis;
use super::fmt::{md, md_code};
use super::sections::{Block, Doc, Inline, TCell};
use std::fmt::Write as _;

fn inline(parts: &[Inline], cell: bool) -> String {
    let mut out = String::new();
    for p in parts {
        match p {
            Inline::Text(s) | Inline::Link(s, _) => out.push_str(&md(s, cell)),
            Inline::Code(s) => out.push_str(&md_code(s, cell)),
            Inline::Strong(s) => {
                out.push_str("**");
                out.push_str(&md(s, cell));
                out.push_str("**");
            }
        }
    }
    out
}

fn cell(c: &TCell) -> String {
    let s = inline(&c.parts, true);
    if s.is_empty() { " ".into() } else { s }
}

pub fn render(a: &Analysis, doc: &Doc) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Report: {}\n", md(&a.input.experiment, false));
    out.push_str(
        "Charts and links from every number to the trials it counts: `report.html`. Per-trial rows: `trials.csv`, `trials.jsonl`; aggregates: `summary.csv`, `summary.json`.\n\n",
    );
    for s in &doc.sections {
        let _ = writeln!(out, "## {}\n", md(&s.title, false));
        for b in &s.blocks {
            match b {
                Block::Para(p) => {
                    out.push_str(&inline(p, false));
                    out.push_str("\n\n");
                }
                Block::Heading(h) => {
                    let _ = writeln!(out, "### {}\n", md(h, false));
                }
                Block::List(items) => {
                    for i in items {
                        let _ = writeln!(out, "- {}", inline(i, false));
                    }
                    out.push('\n');
                }
                Block::Table(t) => {
                    let head: Vec<String> = t.head.iter().map(|h| md(h, true)).collect();
                    let _ = writeln!(out, "| {} |", head.join(" | "));
                    let align: Vec<&str> = (0..t.head.len())
                        .map(|i| {
                            let num = t.rows.iter().any(|r| r.get(i).is_some_and(|c| c.num));
                            if num { "---:" } else { "---" }
                        })
                        .collect();
                    let _ = writeln!(out, "|{}|", align.join("|"));
                    for r in &t.rows {
                        let cells: Vec<String> = r.iter().map(cell).collect();
                        let _ = writeln!(out, "| {} |", cells.join(" | "));
                    }
                    out.push('\n');
                }
                Block::Chart(c) => {
                    let _ = writeln!(
                        out,
                        "Chart `{}` in report.html: {}\n",
                        c.id,
                        md(&c.caption, false)
                    );
                }
                Block::TrialLists => {}
            }
        }
    }
    out
}
