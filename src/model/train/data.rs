//! Conversations → token ids and the positions the loss is taken at.
//!
//! A training sequence is the prompt exactly as inference renders it (the chat template with
//! the generation prompt, the system and user turns), then the reply's tokens and the
//! end-of-turn token — the very tokens the local backend would have to generate. The loss is
//! on the reply and its end token only.

use crate::model::template::{ChatTemplate, Message, Role};
use crate::model::tokenizer::GgufTokenizer;

/// A conversation to learn the reply of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The turns before the reply (system, user), as inference sends them.
    pub prompt: Vec<Message>,
    /// The reply to learn.
    pub reply: String,
}

/// One tokenised example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Prompt, reply and end-of-turn token.
    pub ids: Vec<u32>,
    /// How many of `ids` are prompt (no loss).
    pub prompt_len: usize,
}

impl Example {
    /// Tokens the loss is taken on.
    pub fn targets(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

/// The examples, and how many conversations did not fit.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// In input order.
    pub examples: Vec<Example>,
    /// Dropped: longer than the limit (prompt, reply and end token).
    pub too_long: usize,
}

/// The token that ends an assistant turn in this template: the first token after a reply when
/// the template renders one (`<|im_end|>` for ChatML), if generation stops there; else EOS.
/// (A GGUF's EOS may be `<|endoftext|>` while its turns end with `<|im_end|>`: the model must
/// learn to say what ends generation at inference.)
pub fn turn_end(tokenizer: &GgufTokenizer, template: &ChatTemplate) -> Result<u32, String> {
    let marker = "\u{2063}reply\u{2063}";
    let Ok(text) = template.render(
        &[
            Message::new(Role::User, "x"),
            Message::new(Role::Assistant, marker),
        ],
        false,
    ) else {
        return Ok(tokenizer.eos());
    };
    let after = text.rsplit_once(marker).map_or("", |(_, a)| a);
    let ids = tokenizer
        .encode_continuation(after)
        .map_err(|e| e.to_string())?;
    Ok(ids
        .into_iter()
        .find(|id| tokenizer.ends_generation(*id))
        .unwrap_or_else(|| tokenizer.eos()))
}

/// Tokenise `conversations` as inference will see them; drop those longer than `max_len`.
pub fn prepare(
    conversations: &[Conversation],
    tokenizer: &GgufTokenizer,
    template: &ChatTemplate,
    max_len: usize,
) -> Result<Prepared, String> {
    let mut out = Prepared::default();
    let end = turn_end(tokenizer, template)?;
    for c in conversations {
        let text = template.render(&c.prompt, true)?;
        let mut ids = tokenizer.encode(&text).map_err(|e| e.to_string())?;
        let prompt_len = ids.len();
        if prompt_len == 0 {
            return Err("the chat template renders an empty prompt".into());
        }
        ids.extend(
            tokenizer
                .encode_continuation(&c.reply)
                .map_err(|e| e.to_string())?,
        );
        ids.push(end);
        if ids.len() > max_len {
            out.too_long += 1;
            continue;
        }
        out.examples.push(Example { ids, prompt_len });
    }
    Ok(out)
}

/// A padded batch: ids (rows × len, right-padded) and, for every loss target, its flat
/// position (the row's hidden state that predicts it) and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Rows.
    pub rows: usize,
    /// Padded length.
    pub len: usize,
    /// rows × len ids.
    pub ids: Vec<u32>,
    /// Flat positions (row × len + t) whose next token is a target.
    pub positions: Vec<u32>,
    /// The target ids.
    pub targets: Vec<u32>,
}

/// Pad `examples` into one batch (`pad` fills; it is never a target, and with right padding
/// and a causal mask no real position sees it).
pub fn batch(examples: &[&Example], pad: u32) -> Batch {
    let len = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let mut b = Batch {
        rows: examples.len(),
        len,
        ids: Vec::with_capacity(examples.len() * len),
        positions: Vec::new(),
        targets: Vec::new(),
    };
    for (r, e) in examples.iter().enumerate() {
        b.ids.extend_from_slice(&e.ids);
        b.ids.extend(std::iter::repeat_n(pad, len - e.ids.len()));
        for t in e.prompt_len..e.ids.len() {
            b.positions.push((r * len + t - 1) as u32);
            b.targets.push(e.ids[t]);
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_reply_and_its_end_and_padding_is_never_one() {
        let a = Example {
            ids: vec![1, 2, 3, 10, 11, 99],
            prompt_len: 3,
        };
        let b = Example {
            ids: vec![1, 2, 20, 99],
            prompt_len: 2,
        };
        let bt = batch(&[&a, &b], 0);
        assert_eq!((bt.rows, bt.len), (2, 6));
        assert_eq!(bt.ids, [1, 2, 3, 10, 11, 99, 1, 2, 20, 99, 0, 0]);
        // Row 0: positions 2, 3, 4 predict 10, 11, 99; row 1: 1, 2 predict 20, 99.
        assert_eq!(bt.positions, [2, 3, 4, 7, 8]);
        assert_eq!(bt.targets, [10, 11, 99, 20, 99]);
        assert_eq!(a.targets() + b.targets(), bt.targets.len());
    }
}
