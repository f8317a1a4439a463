//! Taking code out of a reply, in the published harness's order, so that our success rates
//! mean what theirs mean.

use serde::{Deserialize, Serialize};

/// Which rule found the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// The first closed ```` ```python ```` (or ```` ```py ````) block.
    PythonBlock,
    /// The first closed fenced block of any other language (or none).
    AnyBlock,
    /// Everything from the first line starting with `def`, `import`, `from` or `class`.
    CodeStart,
    /// The whole reply.
    Whole,
}

/// The code in `reply` and the rule that found it.
pub fn extract_code(reply: &str) -> (String, Shape) {
    let blocks = fenced_blocks(reply);
    if let Some((_, body)) = blocks.iter().find(|(lang, _)| {
        matches!(
            lang.to_ascii_lowercase().as_str(),
            "python" | "py" | "python3"
        )
    }) {
        return (body.clone(), Shape::PythonBlock);
    }
    if let Some((_, body)) = blocks.first() {
        return (body.clone(), Shape::AnyBlock);
    }
    let mut offset = 0;
    for line in reply.split_inclusive('\n') {
        let l = line.trim_end();
        if ["def ", "import ", "from ", "class "]
            .iter()
            .any(|p| l.starts_with(p))
        {
            return (
                reply[offset..].trim_end().to_string() + "\n",
                Shape::CodeStart,
            );
        }
        offset += line.len();
    }
    (reply.to_string(), Shape::Whole)
}

/// Closed fenced blocks: (info string, body). A block the token limit cut off (no closing
/// fence) is not a block, as in the published harness's regular expression.
fn fenced_blocks(reply: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in reply.split_inclusive('\n') {
        let t = line.trim();
        match &mut open {
            None => {
                if let Some(info) = line.trim_start().strip_prefix("```") {
                    open = Some((info.trim().to_string(), String::new()));
                }
            }
            Some((info, body)) => {
                if t == "```" {
                    out.push((std::mem::take(info), std::mem::take(body)));
                    open = None;
                } else {
                    body.push_str(line);
                    if !line.ends_with('\n') {
                        body.push('\n');
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_order() {
        let r = "Here:\n```\nx = 0\n```\nand\n```python\ndef f():\n    return 1\n```\n";
        assert_eq!(
            extract_code(r),
            ("def f():\n    return 1\n".into(), Shape::PythonBlock)
        );
        let r = "```text\nhello\n```\n";
        assert_eq!(extract_code(r), ("hello\n".into(), Shape::AnyBlock));
        let r = "Sure! Here it is.\nimport os\nclass A:\n    pass\n";
        assert_eq!(
            extract_code(r),
            ("import os\nclass A:\n    pass\n".into(), Shape::CodeStart)
        );
        let r = "I cannot help with that.";
        assert_eq!(extract_code(r), (r.into(), Shape::Whole));
        // Cut off by the token limit: the unclosed block is no block.
        let r = "```python\nimport pytest\ndef test_a(";
        assert_eq!(
            extract_code(r),
            ("import pytest\ndef test_a(\n".into(), Shape::CodeStart)
        );
    }
}
