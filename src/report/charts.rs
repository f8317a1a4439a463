//! The inline SVG charts, drawn with plotters' SVG backend into a `String`.
//!
//! Text: plotters is built without `ttf`/`ab_glyph`, so its font layer is the "naive" one: it
//! estimates text extents from the character count (enough for label-area layout) and never
//! rasterises. The SVG backend overrides `draw_text` and writes each label as an SVG `<text>`
//! element (`font-family="sans-serif"`, XML-escaped), so the browser lays out the glyphs and no
//! font is needed at render time. Labels go through [`svg_text`] first (XML-forbidden control
//! characters removed). Any drawing error — or a panic inside plotters — yields a small
//! placeholder SVG that says so, never a failed report.

use super::Training;
use super::analysis::{Analysis, Cell, Comparison};
use super::fmt::{esc, svg_text};
use crate::stats;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::panic::{AssertUnwindSafe, catch_unwind};

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Res = Result<(), Box<dyn std::error::Error>>;

const FONT: &str = "sans-serif";
const PALETTE: [RGBColor; 10] = [
    RGBColor(78, 121, 167),
    RGBColor(242, 142, 43),
    RGBColor(225, 87, 89),
    RGBColor(118, 183, 178),
    RGBColor(89, 161, 79),
    RGBColor(237, 201, 72),
    RGBColor(176, 122, 161),
    RGBColor(255, 157, 167),
    RGBColor(156, 117, 95),
    RGBColor(186, 176, 172),
];
const GREY: RGBColor = RGBColor(200, 200, 200);

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Renders one chart; errors and panics become a placeholder.
fn svg(w: u32, h: u32, draw: impl FnOnce(&Area) -> Res) -> String {
    let out = catch_unwind(AssertUnwindSafe(|| {
        let mut buf = String::new();
        let r: Res = {
            let root = SVGBackend::with_string(&mut buf, (w, h)).into_drawing_area();
            root.fill(&WHITE)
                .map_err(Into::into)
                .and_then(|_| draw(&root))
                .and_then(|_| root.present().map_err(Into::into))
        };
        r.map(|_| buf).map_err(|e| e.to_string())
    }));
    match out {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => placeholder(w, h, &format!("chart unavailable: {e}")),
        Err(_) => placeholder(w, h, "chart unavailable: the chart library panicked"),
    }
}

fn placeholder(w: u32, h: u32, msg: &str) -> String {
    format!(
        "<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\">\n<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#FFFFFF\"/>\n<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-family=\"sans-serif\" font-size=\"14\" fill=\"#666666\">{}</text>\n</svg>\n",
        w / 2,
        h / 2,
        esc(msg)
    )
}

fn text_style(size: u32, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font()).pos(Pos::new(h, v))
}

fn label(root: &Area, s: &str, at: (i32, i32), size: u32, h: HPos, v: VPos) -> Res {
    root.draw(&Text::new(svg_text(s), at, text_style(size, h, v)))?;
    Ok(())
}

/// A chart with nothing to show: a title and a sentence.
fn empty(root: &Area, title: &str, msg: &str) -> Res {
    let (w, h) = root.dim_in_pixel();
    label(root, title, (w as i32 / 2, 10), 22, HPos::Center, VPos::Top)?;
    label(
        root,
        msg,
        (w as i32 / 2, h as i32 / 2),
        14,
        HPos::Center,
        VPos::Center,
    )
}

/// The chart's title, centred at the top, and the legend for `names` under it (none if empty).
fn heading(root: &Area, title: &str, names: &[String]) -> Res {
    let (w, _) = root.dim_in_pixel();
    label(root, title, (w as i32 / 2, 8), 22, HPos::Center, VPos::Top)?;
    if names.is_empty() {
        return Ok(());
    }
    legend(root, names, 34)
}

/// The arms' names, in legend order.
fn arm_names(a: &Analysis) -> Vec<String> {
    a.arms.iter().map(|a| a.name.clone()).collect()
}

/// A name as charts show it: long ones lose their middle to "…" (the tables carry them whole),
/// so legends and row labels stay inside the chart and names that differ only at the end
/// (`…-lr1e-4`, `…-lr3e-4`) stay apart.
fn short_name(n: &str) -> String {
    let chars: Vec<char> = n.chars().collect();
    if chars.len() > 28 {
        chars[..13]
            .iter()
            .chain(['…'].iter())
            .chain(chars[chars.len() - 14..].iter())
            .collect()
    } else {
        n.to_string()
    }
}

/// Legend boxes for the arms, in a row under the title.
fn legend(root: &Area, names: &[String], y: i32) -> Res {
    let mut x = 60;
    for (i, n) in names.iter().enumerate() {
        root.draw(&Rectangle::new(
            [(x, y), (x + 12, y + 12)],
            colour(i).filled(),
        ))?;
        // ≈ 9 px a character at this size.
        let shown = short_name(n);
        label(root, &shown, (x + 16, y + 6), 15, HPos::Left, VPos::Center)?;
        x += 30 + 9 * shown.chars().count() as i32;
    }
    Ok(())
}

/// Groups on the x axis: each task, then "overall".
fn groups<'x>(a: &'x Analysis) -> Vec<(String, Vec<&'x Cell<'x>>)> {
    let mut g: Vec<(String, Vec<&Cell>)> = a
        .tasks
        .iter()
        .zip(&a.cells)
        .map(|(t, row)| (t.id.clone(), row.iter().collect()))
        .collect();
    g.push(("overall".into(), a.overall.iter().collect()));
    g
}

fn width_for(groups: usize, per_group: usize) -> u32 {
    (140 + groups * (per_group * 18 + 34).max(80)).clamp(520, 1600) as u32
}

/// Task names under the x axis of a chart whose x range is `0..groups`.
fn x_names<X, Y>(
    root: &Area,
    chart: &ChartContext<SVGBackend, Cartesian2d<X, Y>>,
    names: &[String],
    y0: Y::ValueType,
) -> Res
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged,
    Y::ValueType: Clone,
{
    for (i, n) in names.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(i as f64 + 0.5, y0.clone()));
        label(root, n, (px, py + 8), 15, HPos::Center, VPos::Top)?;
    }
    Ok(())
}

/// `chart-rates`: per task (and overall), one bar per arm with its Wilson interval.
pub fn rates(a: &Analysis) -> String {
    let g = groups(a);
    let n_arms = a.arms.len();
    let w = width_for(g.len(), n_arms);
    svg(w, 400, |root| {
        let title = "Success rate per task and arm (Wilson 95% CI)";
        if n_arms == 0 {
            return empty(root, title, "No arms.");
        }
        heading(root, title, &arm_names(a))?;
        let area = root.margin(56, 0, 0, 16);
        let mut chart = ChartBuilder::on(&area)
            .x_label_area_size(34)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..g.len() as f64, 0f64..100f64)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(6)
            .y_desc("success %")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(WHITE)
            .label_style((FONT, 15))
            .draw()?;
        let bw = 0.8 / n_arms as f64;
        for (gi, (_, cells)) in g.iter().enumerate() {
            for (ai, c) in cells.iter().enumerate() {
                let Some(r) = c.rate else { continue };
                let x0 = gi as f64 + 0.1 + ai as f64 * bw;
                let x1 = x0 + bw * 0.88;
                let xc = (x0 + x1) / 2.0;
                chart.draw_series([Rectangle::new(
                    [(x0, 0.0), (x1, r * 100.0)],
                    colour(ai).filled(),
                )])?;
                chart.draw_series([ErrorBar::new_vertical(
                    xc,
                    c.ci.0 * 100.0,
                    r * 100.0,
                    c.ci.1 * 100.0,
                    BLACK.stroke_width(1),
                    6,
                )])?;
            }
        }
        x_names(
            root,
            &chart,
            &g.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            0.0,
        )
    })
}

/// `chart-delta`: Δ points per task (and overall) of one comparison, with stars.
pub fn delta(a: &Analysis, c: &Comparison) -> String {
    let mut rows: Vec<(String, Option<f64>, Option<f64>)> = a
        .tasks
        .iter()
        .zip(&c.tasks)
        .map(|(t, x)| (t.id.clone(), x.delta, x.p))
        .collect();
    rows.push(("overall".into(), c.overall.delta, c.overall.p));
    let w = width_for(rows.len(), 1);
    let title = format!("Δ points per task: {}", a.pair_label(c));
    svg(w, 380, |root| {
        if rows.iter().all(|r| r.1.is_none()) {
            return empty(
                root,
                &title,
                "No Δ to draw: an arm of this comparison has no trials yet.",
            );
        }
        let m = rows
            .iter()
            .filter_map(|r| r.1)
            .map(f64::abs)
            .fold(10.0_f64, f64::max);
        let m = ((m / 10.0).ceil() * 10.0 + 10.0).min(110.0);
        heading(root, &title, &[])?;
        let area = root.margin(36, 0, 0, 16);
        let mut chart = ChartBuilder::on(&area)
            .x_label_area_size(34)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..rows.len() as f64, -m..m)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(9)
            .y_desc("Δ points")
            .y_label_formatter(&|v| {
                if v.abs() < 0.5 {
                    "0".to_string()
                } else {
                    format!("{v:+.0}")
                }
            })
            .light_line_style(WHITE)
            .label_style((FONT, 15))
            .draw()?;
        chart.draw_series([PathElement::new(
            vec![(0.0, 0.0), (rows.len() as f64, 0.0)],
            BLACK.stroke_width(1),
        )])?;
        for (i, (_, d, p)) in rows.iter().enumerate() {
            let x0 = i as f64 + 0.2;
            let x1 = i as f64 + 0.8;
            let Some(d) = *d else {
                let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
                label(root, "n/a", (px, py - 4), 15, HPos::Center, VPos::Bottom)?;
                continue;
            };
            let col = if d >= 0.0 { colour(4) } else { colour(2) };
            chart.draw_series([Rectangle::new([(x0, 0.0), (x1, d)], col.filled())])?;
            let stars = p.map(stats::stars).unwrap_or("");
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, d));
            let txt = format!(
                "{}{}",
                super::fmt::pts(d),
                if stars.is_empty() {
                    String::new()
                } else {
                    format!(" {stars}")
                }
            );
            if d >= 0.0 {
                label(root, &txt, (px, py - 3), 15, HPos::Center, VPos::Bottom)?;
            } else {
                label(root, &txt, (px, py + 3), 15, HPos::Center, VPos::Top)?;
            }
        }
        let (_, ybottom) = chart.backend_coord(&(0.0, -m));
        for (i, (n, _, _)) in rows.iter().enumerate() {
            let (px, _) = chart.backend_coord(&(i as f64 + 0.5, -m));
            label(root, n, (px, ybottom + 8), 15, HPos::Center, VPos::Top)?;
        }
        Ok(())
    })
}

/// A colour from pale yellow (0%) through green to dark blue (100%).
fn scale(r: f64) -> RGBColor {
    const STOPS: [(f64, (f64, f64, f64)); 4] = [
        (0.0, (255.0, 247.0, 188.0)),
        (0.4, (161.0, 217.0, 155.0)),
        (0.7, (65.0, 171.0, 93.0)),
        (1.0, (8.0, 69.0, 148.0)),
    ];
    let r = r.clamp(0.0, 1.0);
    for w in STOPS.windows(2) {
        let ((a, ca), (b, cb)) = (w[0], w[1]);
        if r <= b {
            let t = if b > a { (r - a) / (b - a) } else { 0.0 };
            let mix = |x: f64, y: f64| (x + (y - x) * t).round() as u8;
            return RGBColor(mix(ca.0, cb.0), mix(ca.1, cb.1), mix(ca.2, cb.2));
        }
    }
    RGBColor(8, 69, 148)
}

/// `chart-heatmap`: task (and overall) × arm, coloured by rate, the % in each cell.
pub fn heatmap(a: &Analysis) -> String {
    let g = groups(a);
    let n_arms = a.arms.len();
    let cw = 92i32;
    let ch = 34i32;
    let left = 20
        + 9 * a
            .arms
            .iter()
            .map(|a| short_name(&a.name).chars().count())
            .max()
            .unwrap_or(4) as i32;
    let top = 64i32;
    let w = (left + cw * g.len() as i32 + 30).max(420) as u32;
    let h = (top + ch * n_arms.max(1) as i32 + 70) as u32;
    svg(w, h, |root| {
        let title = "Success rate: task × arm";
        if n_arms == 0 {
            return empty(root, title, "No arms.");
        }
        heading(root, title, &[])?;
        for (gi, (name, _)) in g.iter().enumerate() {
            let x = left + gi as i32 * cw + cw / 2;
            let short: String = name.chars().take(12).collect();
            label(root, &short, (x, top - 6), 15, HPos::Center, VPos::Bottom)?;
        }
        for (ai, arm) in a.arms.iter().enumerate() {
            let y = top + ai as i32 * ch;
            label(
                root,
                &short_name(&arm.name),
                (left - 8, y + ch / 2),
                15,
                HPos::Right,
                VPos::Center,
            )?;
            for (gi, (_, cells)) in g.iter().enumerate() {
                let x = left + gi as i32 * cw;
                let c = cells[ai];
                let (fill, txt, dark) = match c.rate {
                    Some(r) => (scale(r), format!("{}%", super::fmt::pct(r)), r > 0.6),
                    None => (GREY, "–".to_string(), false),
                };
                root.draw(&Rectangle::new(
                    [(x, y), (x + cw - 2, y + ch - 2)],
                    fill.filled(),
                ))?;
                let col = if dark { WHITE } else { BLACK };
                root.draw(&Text::new(
                    txt,
                    (x + cw / 2 - 1, y + ch / 2 - 1),
                    text_style(15, HPos::Center, VPos::Center).color(&col),
                ))?;
            }
        }
        // Colour scale.
        let y = top + ch * n_arms as i32 + 16;
        let steps = 20;
        let sw = 10;
        for i in 0..steps {
            let x = left + i * sw;
            root.draw(&Rectangle::new(
                [(x, y), (x + sw, y + 12)],
                scale(i as f64 / (steps - 1) as f64).filled(),
            ))?;
        }
        label(root, "0%", (left, y + 16), 14, HPos::Left, VPos::Top)?;
        label(
            root,
            "100%",
            (left + steps * sw, y + 16),
            14,
            HPos::Right,
            VPos::Top,
        )
    })
}

/// `chart-retries`: per arm, the share of passed trials at each R, tests and impl steps.
pub fn retries(a: &Analysis) -> String {
    let n_arms = a.arms.len();
    let cols = a.r_columns.max(1);
    let panel_w = width_for(cols, n_arms).min(760);
    let w = (panel_w * 2).min(1500);
    svg(w, 380, |root| {
        let title = "Retries among passed trials (R = attempts − 1)";
        if n_arms == 0 {
            return empty(root, title, "No arms.");
        }
        if a.overall.iter().all(|c| c.successes == 0) {
            return empty(
                root,
                title,
                "No trial passed: retries are counted over passed trials only.",
            );
        }
        heading(root, title, &arm_names(a))?;
        let area = root.margin(56, 0, 0, 0);
        let panels = area.split_evenly((1, 2));
        for (pi, (panel, step)) in panels.iter().zip(["tests step", "impl step"]).enumerate() {
            let mut chart = ChartBuilder::on(panel)
                .margin_right(12)
                .x_label_area_size(40)
                .y_label_area_size(52)
                .build_cartesian_2d(0f64..cols as f64, 0f64..100f64)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_labels(6)
                .y_desc(format!("{step}: % of passed"))
                .y_label_formatter(&|v| format!("{v:.0}"))
                .light_line_style(WHITE)
                .label_style((FONT, 15))
                .draw()?;
            let bw = 0.8 / n_arms as f64;
            for (ai, c) in a.overall.iter().enumerate() {
                if c.successes == 0 {
                    continue;
                }
                let counts = if pi == 0 { &c.r_tests } else { &c.r_impl };
                for r in 0..cols {
                    let k = counts.get(r).copied().unwrap_or(0);
                    let share = k as f64 / c.successes as f64 * 100.0;
                    let x0 = r as f64 + 0.1 + ai as f64 * bw;
                    chart.draw_series([Rectangle::new(
                        [(x0, 0.0), (x0 + bw * 0.88, share)],
                        colour(ai).filled(),
                    )])?;
                }
            }
            let names: Vec<String> = (0..cols)
                .map(|r| {
                    if r == super::analysis::R_CAP {
                        format!("R≥{r}")
                    } else {
                        format!("R={r}")
                    }
                })
                .collect();
            x_names(root, &chart, &names, 0.0)?;
        }
        Ok(())
    })
}

/// `chart-durations`: per task, one box per arm (q25–q75, median, whiskers min–max).
pub fn durations(a: &Analysis) -> String {
    let n_arms = a.arms.len();
    let g: Vec<(String, Vec<&Cell>)> = a
        .tasks
        .iter()
        .zip(&a.cells)
        .map(|(t, row)| (t.id.clone(), row.iter().collect()))
        .collect();
    let w = width_for(g.len().max(1), n_arms);
    svg(w, 400, |root| {
        let title = "Trial duration per task and arm (seconds)";
        let max = a
            .overall
            .iter()
            .filter_map(|c| c.durations.map(|d| d.max))
            .fold(0.0_f64, f64::max);
        if n_arms == 0 || g.is_empty() || a.input.trials.is_empty() {
            return empty(root, title, "No trials.");
        }
        let top = if max > 0.0 { max * 1.08 } else { 1.0 };
        heading(root, title, &arm_names(a))?;
        let area = root.margin(56, 0, 0, 16);
        let mut chart = ChartBuilder::on(&area)
            .x_label_area_size(34)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..g.len() as f64, 0f64..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(6)
            .y_desc("seconds")
            .light_line_style(WHITE)
            .label_style((FONT, 15))
            .draw()?;
        let bw = 0.8 / n_arms as f64;
        for (gi, (_, cells)) in g.iter().enumerate() {
            for (ai, c) in cells.iter().enumerate() {
                let Some(d) = c.durations else { continue };
                let x0 = gi as f64 + 0.1 + ai as f64 * bw;
                let x1 = x0 + bw * 0.8;
                let xc = (x0 + x1) / 2.0;
                let col = colour(ai);
                let line = col.stroke_width(1);
                chart.draw_series([
                    PathElement::new(vec![(xc, d.min), (xc, d.q25)], line),
                    PathElement::new(vec![(xc, d.q75), (xc, d.max)], line),
                    PathElement::new(vec![(x0 + bw * 0.2, d.min), (x1 - bw * 0.2, d.min)], line),
                    PathElement::new(vec![(x0 + bw * 0.2, d.max), (x1 - bw * 0.2, d.max)], line),
                ])?;
                chart.draw_series([
                    Rectangle::new([(x0, d.q25), (x1, d.q75)], col.mix(0.35).filled()),
                    Rectangle::new([(x0, d.q25), (x1, d.q75)], col.stroke_width(1)),
                ])?;
                chart.draw_series([PathElement::new(
                    vec![(x0, d.median), (x1, d.median)],
                    BLACK.stroke_width(2),
                )])?;
            }
        }
        x_names(
            root,
            &chart,
            &g.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            0.0,
        )
    })
}

/// `chart-loss`: training and validation loss per step.
pub fn loss(tr: &Training) -> String {
    let fin = |v: &[(u64, f64)]| -> Vec<(f64, f64)> {
        v.iter()
            .filter(|(_, l)| l.is_finite())
            .map(|&(s, l)| (s as f64, l))
            .collect()
    };
    let (train, val) = (fin(&tr.loss), fin(&tr.val_loss));
    svg(760, 380, |root| {
        let title = "Training loss";
        let all: Vec<&(f64, f64)> = train.iter().chain(val.iter()).collect();
        if all.is_empty() {
            return empty(root, title, "No loss points.");
        }
        let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
        for &&(x, y) in &all {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.08).max(1e-3 * y1.abs().max(1.0));
        let (y0, y1) = (
            (y0 - pad).max(if y0 >= 0.0 { 0.0 } else { f64::NEG_INFINITY }),
            y1 + pad,
        );
        heading(
            root,
            title,
            &["training".to_string(), "validation".to_string()],
        )?;
        let area = root.margin(56, 0, 0, 16);
        let mut chart = ChartBuilder::on(&area)
            .margin_right(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(WHITE)
            .label_style((FONT, 15))
            .draw()?;
        for (i, pts) in [&train, &val].into_iter().enumerate() {
            if pts.is_empty() {
                continue;
            }
            let col = colour(i);
            chart.draw_series(LineSeries::new(pts.iter().copied(), col.stroke_width(2)))?;
            if pts.len() <= 60 {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, col.filled())))?;
            }
        }
        Ok(())
    })
}
