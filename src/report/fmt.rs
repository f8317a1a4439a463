//! Number formats, escaping and anchor names shared by every output, so the Markdown, the
//! HTML and the tests agree to the character.

/// A share as a percentage with one decimal: `0.75` → `75.0`.
pub fn pct(x: f64) -> String {
    format!("{:.1}", x * 100.0)
}

/// Points with a sign and one decimal: `25.0` → `+25.0`; zero is `0.0`.
pub fn pts(x: f64) -> String {
    if x.abs() < 0.05 {
        "0.0".into()
    } else {
        format!("{x:+.1}")
    }
}

/// A p-value with four decimals (`0.1175`); below 0.0001 as `<0.0001`.
pub fn pval(p: f64) -> String {
    if p < 0.0001 {
        "<0.0001".into()
    } else {
        format!("{p:.4}")
    }
}

/// Cohen's h with a sign and two decimals; zero is `0.00`.
pub fn hval(h: f64) -> String {
    if h.abs() < 0.005 {
        "0.00".into()
    } else {
        format!("{h:+.2}")
    }
}

/// Seconds with one decimal.
pub fn secs(x: f64) -> String {
    format!("{x:.1}")
}

/// A Wilson interval in percent: `[30.1, 95.4]`.
pub fn ci(lo: f64, hi: f64) -> String {
    format!("[{}, {}]", pct(lo), pct(hi))
}

/// Text for XML/XHTML content or a quoted attribute: the five specials escaped, characters
/// XML 1.0 forbids dropped.
///
/// Copies runs of plain text whole (transcripts make this the report's hot loop: hundreds of MB
/// at 10,000 trials).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut plain = 0;
    for (i, c) in s.char_indices() {
        let rep = match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            '"' => "&quot;",
            '\'' => "&#39;",
            c if xml_char(c) => continue,
            _ => "",
        };
        out.push_str(&s[plain..i]);
        out.push_str(rep);
        plain = i + c.len_utf8();
    }
    out.push_str(&s[plain..]);
    out
}

/// Whether XML 1.0 allows this character in a document.
pub fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Text safe to hand to the SVG backend (which escapes the specials but not control
/// characters).
pub fn svg_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if xml_char(c) && c != '\n' && c != '\r' {
                c
            } else {
                ' '
            }
        })
        .collect()
}

/// Text for Markdown: names never turn into markup, yet plain prose (`p < 0.05`, `* p`)
/// stays readable in the raw file. `<` and `&` are escaped only where they could start a
/// tag or an entity, `*`, `_`, `]` only where they could act, `` ` `` and `\\` always; line breaks are
/// flattened; in a table cell (`cell`), `|` is escaped too.
pub fn md(s: &str, cell: bool) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        let next = chars.get(i + 1).copied();
        let prev = if i > 0 {
            chars.get(i - 1).copied()
        } else {
            None
        };
        let blank = |x: Option<char>| x.is_none_or(char::is_whitespace);
        match c {
            '|' if cell => out.push_str("\\|"),
            '\\' => out.push_str("\\\\"),
            '<' if next.is_some_and(|n| n.is_ascii_alphabetic() || "/!?".contains(n)) => {
                out.push_str("&lt;")
            }
            '&' if next.is_some_and(|n| n.is_ascii_alphanumeric() || n == '#') => {
                out.push_str("&amp;")
            }
            // A bracket makes a link only as `](`, `][` or `]:`.
            '`' => out.push_str("\\`"),
            ']' if next.is_some_and(|n| "([:".contains(n)) => out.push_str("\\]"),
            // Emphasis needs a delimiter next to a non-blank character.
            '*' | '_' | '~' => {
                let run_start = chars[..i].iter().rev().take_while(|&&x| x == c).count();
                let run_end = chars[i..].iter().take_while(|&&x| x == c).count();
                let before = if i > run_start {
                    Some(chars[i - run_start - 1])
                } else {
                    None
                };
                let after = chars.get(i + run_end).copied();
                let intraword_underscore = c == '_'
                    && prev.is_some_and(char::is_alphanumeric)
                    && next.is_some_and(char::is_alphanumeric);
                if (blank(before) && blank(after)) || intraword_underscore {
                    out.push(c);
                } else {
                    out.push('\\');
                    out.push(c);
                }
            }
            '\n' | '\r' => out.push(' '),
            c if xml_char(c) => out.push(c),
            _ => {}
        }
    }
    out
}

/// Inline code in Markdown: backticks long enough to hold the text (`|` escaped in a table
/// cell, where it would split the row even inside code).
pub fn md_code(s: &str, cell: bool) -> String {
    let s: String = s
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    let mut ticks = 1;
    while s.contains(&"`".repeat(ticks)) {
        ticks += 1;
    }
    let fence = "`".repeat(ticks);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    let s = if cell { s.replace('|', "\\|") } else { s };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// One name as part of an id: ASCII letters, digits and `_` kept, anything else as `.XX`
/// (UTF-8 bytes in hex), so `-` can separate parts and ids never collide.
pub fn id_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!(".{b:02x}"));
        }
    }
    out
}

/// The id of a task × arm trial list: `trials-stack-base`.
pub fn cell_id(task: &str, arm: &str) -> String {
    format!("trials-{}-{}", id_part(task), id_part(arm))
}

/// The id of one trial's transcript: `t-stack-base-0`.
pub fn trial_id(task: &str, arm: &str, index: u32) -> String {
    format!("t-{}-{}-{index}", id_part(task), id_part(arm))
}

/// The id of an arm's trial lists: `arm-base`.
pub fn arm_id(arm: &str) -> String {
    format!("arm-{}", id_part(arm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(pct(0.75), "75.0");
        assert_eq!(pts(25.0), "+25.0");
        assert_eq!(pts(-3.333), "-3.3");
        assert_eq!(pts(-0.0), "0.0");
        assert_eq!(pval(0.11748), "0.1175");
        assert_eq!(pval(0.00001), "<0.0001");
        assert_eq!(hval(-0.0), "0.00");
        assert_eq!(esc("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot;");
        assert_eq!(md("a|b\nc", true), "a\\|b c");
        assert_eq!(md("a|b", false), "a|b");
        assert_eq!(
            md("p < 0.05 & <b> &amp;", false),
            "p < 0.05 & &lt;b> &amp;amp;"
        );
        assert_eq!(
            md("* p, ** p, a*b*, lru_cache, _x_", false),
            "* p, ** p, a\\*b\\*, lru_cache, \\_x\\_"
        );
        assert_eq!(md("[30.1, 95.4] [a](b)", false), "[30.1, 95.4] [a\\](b)");
        assert_eq!(md_code("x`y", false), "``x`y``");
        assert_eq!(md_code("a|b", true), "`a\\|b`");
        assert_eq!(cell_id("lru_cache", "base"), "trials-lru_cache-base");
        assert_eq!(cell_id("a-b", "c"), "trials-a.2db-c");
        assert_ne!(cell_id("a-b", "c"), cell_id("a", "b-c"));
    }
}
