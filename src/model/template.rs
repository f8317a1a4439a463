//! A model's chat template (Jinja, from the GGUF's `tokenizer.chat_template` or a checkpoint's
//! `tokenizer_config.json`), rendered the way Hugging Face renders it.
//!
//! One renderer for inference and training: a fine-tuned model must be taught on exactly the
//! text it will later be prompted with, so both go through [`ChatTemplate::render`].

use serde::{Deserialize, Serialize};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The system prompt.
    System,
    /// The prompt.
    User,
    /// The model's reply.
    Assistant,
}

/// One chat message: what a template renders, a chat backend sends and a training sample
/// holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl Message {
    /// A message.
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// A chat template and the special tokens it may name.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// A template, with the text of the beginning- and end-of-sequence tokens.
    pub fn new(source: String, bos: &str, eos: &str) -> ChatTemplate {
        ChatTemplate {
            source,
            bos: bos.into(),
            eos: eos.into(),
        }
    }

    /// The text for `messages`, with the assistant's opening added when
    /// `add_generation_prompt`. The error is minijinja's, in full.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let err = |e: minijinja::Error| format!("{e:#}");
        // Hugging Face renders chat templates with these settings; templates are written
        // for them.
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(err)?;
        env.set_syntax(syntax);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", &self.source).map_err(err)?;
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => minijinja::value::Serde(messages),
                    add_generation_prompt => add_generation_prompt,
                    bos_token => self.bos.as_str(),
                    eos_token => self.eos.as_str(),
                })
            })
            .map_err(err)
    }
}
