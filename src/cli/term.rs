//! Text that reaches a terminal: nothing a model, a server or the sandbox wrote may control it.
//!
//! Generated code, pytest's output and a server's error body can hold escape sequences (ESC,
//! and the C1 controls such as U+009B, a one-character CSI to many terminals) that clear the
//! screen, retitle the window, move the cursor or hide text, and bidirectional overrides that
//! make a line read other than it is. Every line the CLI prints goes through [`printable`]
//! (human text) or [`json_safe`] (JSON), and log lines through [`log_fields`]; pipe's own
//! colour, where there is any, is added after escaping and only on a terminal.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Characters that must not reach a terminal raw: C0 controls (but newline and tab), DEL, the
/// C1 block, and the Unicode bidirectional controls.
fn dangerous(c: char, keep_newlines: bool) -> bool {
    match c {
        '\n' | '\t' => !keep_newlines,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => true,
        _ => false,
    }
}

/// `s` with every dangerous character written as a visible escape: `\x1b`, `\x9b`,
/// `\u{202e}`. Newlines and tabs stay.
pub fn printable(s: &str) -> Cow<'_, str> {
    escape(s, true, visible)
}

/// `\x1b` for a control character, `\u{202e}` for a bidi control.
fn visible(out: &mut String, c: char) {
    if (c as u32) < 0x100 {
        let _ = write!(out, "\\x{:02x}", c as u32);
    } else {
        let _ = write!(out, "\\u{{{:x}}}", c as u32);
    }
}

/// JSON text with every dangerous character inside a string written as a JSON escape
/// (`\u009b`): the same JSON value, safe to print. serde_json already escapes C0; it leaves
/// DEL, C1 and the bidi controls raw.
pub fn json_safe(json: &str) -> Cow<'_, str> {
    escape(json, true, |out, c| {
        let _ = write!(out, "\\u{:04x}", c as u32);
    })
}

fn escape(s: &str, keep_newlines: bool, mut with: impl FnMut(&mut String, char)) -> Cow<'_, str> {
    if !s.chars().any(|c| dangerous(c, keep_newlines)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if dangerous(c, keep_newlines) {
            with(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A `tracing` field formatter that escapes every value (a log line quotes servers and
/// sandboxes): the message as itself, other fields as `name=value`. Newlines are escaped too,
/// so one event is one line.
pub fn log_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> {
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let safe = escape(&text, false, visible);
        if field.name() == "message" {
            write!(w, "{safe}")
        } else {
            write!(w, "{}={safe}", field.name())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_made_visible_and_text_is_kept() {
        assert!(matches!(printable("plain ünïcode\n\tok"), Cow::Borrowed(_)));
        assert_eq!(
            printable("a\x1b]0;pwned\x07b\u{9b}2Jc\rd\u{7f}"),
            "a\\x1b]0;pwned\\x07b\\x9b2Jc\\x0dd\\x7f"
        );
        assert_eq!(printable("x\u{202e}gnp.exe"), "x\\u{202e}gnp.exe");
    }

    #[test]
    fn json_stays_the_same_json() {
        let v = serde_json::json!({"out": "a\u{9b}2J\u{1b}[31m\u{202e}z\u{7f}\n"});
        let text = serde_json::to_string_pretty(&v).unwrap();
        assert!(text.contains('\u{9b}'), "serde_json leaves C1 raw");
        let safe = json_safe(&text);
        assert!(!safe.chars().any(|c| dangerous(c, true)), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, v);
    }
}
