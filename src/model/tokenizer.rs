//! A byte-level BPE tokenizer rebuilt from a GGUF file's metadata.
//!
//! GGUF models carry no `tokenizer.json`: the vocabulary (`tokenizer.ggml.tokens`, already in
//! GPT-2's byte-to-unicode form), the merges, each token's type and the *name* of the
//! pre-tokenizer (`tokenizer.ggml.pre`) are all there is. llama.cpp maps that name to a split
//! regex compiled into its source; we map the same names to the same regexes and hand the rest
//! to the `tokenizers` crate, so that ids agree with llama.cpp's `/tokenize` (the tests check
//! this against the real server). A name we do not know is an error, not a guess: a wrong split
//! silently changes every prompt.

use candle_core::quantized::gguf_file;
use std::collections::HashMap;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// GPT-2's split (llama.cpp's `gpt-2` and the second half of `smollm`/`starcoder`).
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Qwen2's split: single digits, letters with one leading non-letter, newline runs apart.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split: like Qwen2's, but digits in groups of up to three.
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Every digit on its own (the first step of `smollm`/`starcoder`).
const DIGITS_SPLIT: &str = r"\p{N}";

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// Texts of control tokens that end a turn, for models whose GGUF names only `eos`.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
];

/// Why a GGUF's tokenizer could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A metadata key is missing or has the wrong type.
    #[error("GGUF tokenizer metadata `{key}`: {why}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// A tokenizer kind or pre-tokenizer llama.cpp knows but we do not reproduce.
    #[error("unsupported GGUF tokenizer: {0}")]
    Unsupported(String),
    /// The `tokenizers` crate refused what we built, or failed to encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizers(String),
}

/// A tokenizer matching llama.cpp's for one GGUF (or a Hugging Face directory's own), plus the
/// special ids generation needs.
#[derive(Clone)]
pub struct GgufTokenizer {
    tok: Tokenizer,
    tokens: Vec<String>,
    bos: Option<u32>,
    eos: u32,
    add_bos: bool,
    end_of_generation: Vec<u32>,
}

fn key<'a>(
    md: &'a HashMap<String, gguf_file::Value>,
    k: &str,
) -> Result<&'a gguf_file::Value, TokenizerError> {
    md.get(k).ok_or_else(|| TokenizerError::Metadata {
        key: k.into(),
        why: "missing".into(),
    })
}

fn bad(k: &str, e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Metadata {
        key: k.into(),
        why: e.to_string(),
    }
}

fn strings(md: &HashMap<String, gguf_file::Value>, k: &str) -> Result<Vec<String>, TokenizerError> {
    key(md, k)?
        .to_vec()
        .map_err(|e| bad(k, e))?
        .iter()
        .map(|v| v.to_string().cloned().map_err(|e| bad(k, e)))
        .collect()
}

fn opt_u32(md: &HashMap<String, gguf_file::Value>, k: &str) -> Result<Option<u32>, TokenizerError> {
    md.get(k)
        .map(|v| v.to_u32().map_err(|e| bad(k, e)))
        .transpose()
}

/// The split regexes llama.cpp applies for a `tokenizer.ggml.pre` name, in order.
fn splits_for(pre: &str) -> Result<&'static [&'static str], TokenizerError> {
    Ok(match pre {
        "qwen2" | "deepseek-r1-qwen" => &[QWEN2_SPLIT],
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => &[LLAMA3_SPLIT],
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            &[DIGITS_SPLIT, GPT2_SPLIT]
        }
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" => {
            &[GPT2_SPLIT]
        }
        other => {
            return Err(TokenizerError::Unsupported(format!(
                "pre-tokenizer `{other}`"
            )));
        }
    })
}

impl GgufTokenizer {
    /// Rebuild the tokenizer from a GGUF's metadata.
    pub fn from_metadata(
        md: &HashMap<String, gguf_file::Value>,
    ) -> Result<GgufTokenizer, TokenizerError> {
        let model = key(md, "tokenizer.ggml.model")?
            .to_string()
            .map_err(|e| bad("tokenizer.ggml.model", e))?;
        if model != "gpt2" {
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer model `{model}` (only byte-level BPE, `gpt2`)"
            )));
        }
        let pre = match md.get("tokenizer.ggml.pre") {
            Some(v) => v
                .to_string()
                .map_err(|e| bad("tokenizer.ggml.pre", e))?
                .clone(),
            None => "gpt-2".into(),
        };
        let tokens = strings(md, "tokenizer.ggml.tokens")?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| bad("tokenizer.ggml.token_type", e))?
                .iter()
                .map(|t| t.to_i32().map_err(|e| bad("tokenizer.ggml.token_type", e)))
                .collect::<Result<_, _>>()?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(bad(
                "tokenizer.ggml.token_type",
                format!("{} types for {} tokens", types.len(), tokens.len()),
            ));
        }
        let merges = strings(md, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => Err(bad("tokenizer.ggml.merges", format!("merge {m:?}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        let mut pretok: Vec<PreTokenizerWrapper> = Vec::new();
        for re in splits_for(&pre)? {
            let split = Split::new(
                SplitPattern::Regex((*re).into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
            pretok.push(split.into());
        }
        // The regexes above did the splitting; ByteLevel only maps bytes to GPT-2's alphabet.
        pretok.push(ByteLevel::new(false, false, false).into());
        let mut tok = Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(Sequence::new(pretok)));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        // llama.cpp's `parse_special` matches control and user-defined tokens as whole units.
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == TYPE_CONTROL)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        tok.add_special_tokens(&special);
        let user: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == TYPE_USER_DEFINED)
            .map(|(s, _)| AddedToken::from(s.clone(), false).normalized(false))
            .collect();
        tok.add_tokens(&user);

        let eos = opt_u32(md, "tokenizer.ggml.eos_token_id")?
            .ok_or_else(|| bad("tokenizer.ggml.eos_token_id", "missing"))?;
        let bos = opt_u32(md, "tokenizer.ggml.bos_token_id")?;
        let add_bos = match md.get("tokenizer.ggml.add_bos_token") {
            Some(v) => v
                .to_bool()
                .map_err(|e| bad("tokenizer.ggml.add_bos_token", e))?,
            None => false,
        };
        let mut end_of_generation = vec![eos];
        if let Some(eot) = opt_u32(md, "tokenizer.ggml.eot_token_id")? {
            end_of_generation.push(eot);
        }
        for (i, (s, t)) in tokens.iter().zip(&types).enumerate() {
            if *t == TYPE_CONTROL && END_OF_TURN.contains(&s.as_str()) {
                end_of_generation.push(i as u32);
            }
        }
        end_of_generation.sort_unstable();
        end_of_generation.dedup();
        Ok(GgufTokenizer {
            tok,
            tokens,
            bos,
            eos,
            add_bos,
            end_of_generation,
        })
    }

    /// The tokenizer of a Hugging Face checkpoint directory: `tokenizer.json` as it is, the
    /// special tokens from `tokenizer_config.json` and `generation_config.json`.
    pub fn from_hf_dir(dir: &std::path::Path) -> Result<GgufTokenizer, TokenizerError> {
        let read_json = |name: &str| -> Result<Option<serde_json::Value>, TokenizerError> {
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(t) => serde_json::from_str(&t)
                    .map(Some)
                    .map_err(|e| TokenizerError::Tokenizers(format!("{}: {e}", p.display()))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(TokenizerError::Tokenizers(format!("{}: {e}", p.display()))),
            }
        };
        let path = dir.join("tokenizer.json");
        let tok = Tokenizer::from_file(&path)
            .map_err(|e| TokenizerError::Tokenizers(format!("{}: {e}", path.display())))?;
        let vocab = tok.get_vocab(true);
        let mut tokens =
            vec![String::new(); vocab.values().map(|&i| i as usize + 1).max().unwrap_or(0)];
        for (s, i) in vocab {
            tokens[i as usize] = s;
        }
        let cfg = read_json("tokenizer_config.json")?.unwrap_or_default();
        // `"eos_token": "<|im_end|>"` or `{"content": "<|im_end|>", …}`.
        let special = |key: &str| -> Option<u32> {
            let v = &cfg[key];
            let text = v.as_str().or_else(|| v["content"].as_str())?;
            tok.token_to_id(text)
        };
        let mut end_of_generation: Vec<u32> = special("eos_token").into_iter().collect();
        if let Some(g) = read_json("generation_config.json")? {
            match &g["eos_token_id"] {
                serde_json::Value::Number(n) => {
                    end_of_generation.extend(n.as_u64().map(|n| n as u32))
                }
                serde_json::Value::Array(a) => {
                    end_of_generation.extend(a.iter().filter_map(|n| n.as_u64()).map(|n| n as u32))
                }
                _ => {}
            }
        }
        for (id, t) in tok.get_added_tokens_decoder() {
            if t.special && END_OF_TURN.contains(&t.content.as_str()) {
                end_of_generation.push(id);
            }
        }
        end_of_generation.sort_unstable();
        end_of_generation.dedup();
        let eos = *end_of_generation
            .first()
            .ok_or_else(|| TokenizerError::Metadata {
                key: "eos_token".into(),
                why: format!("{} names no end-of-sequence token", dir.display()),
            })?;
        Ok(GgufTokenizer {
            bos: special("bos_token"),
            eos: special("eos_token").unwrap_or(eos),
            add_bos: cfg["add_bos_token"].as_bool().unwrap_or(false),
            tok,
            tokens,
            end_of_generation,
        })
    }

    /// Token ids for `text`, special tokens written in it parsed as such (llama.cpp's
    /// `parse_special`), with the BOS token first where the GGUF asks for it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .tok
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos
            && let Some(b) = self.bos
        {
            ids.push(b);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids for `text` as it continues a sequence (a reply after its prompt): as
    /// [`encode`](Self::encode), without the BOS token.
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .tok
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of generated ids, control tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.tok
            .decode(ids, true)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))
    }

    /// A token's text as the vocabulary spells it (for the chat template's variables).
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The beginning-of-sequence token, if the GGUF names one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token.
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// The ids that stop generation (EOS, EOT, `<|im_end|>` and the like), sorted.
    pub fn end_of_generation(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// Does generation stop at this token?
    pub fn ends_generation(&self, id: u32) -> bool {
        self.end_of_generation.binary_search(&id).is_ok()
    }

    /// The `tokenizers` tokenizer underneath (to save as a `tokenizer.json`).
    pub fn tokenizers(&self) -> &Tokenizer {
        &self.tok
    }

    /// Whether [`encode`](Self::encode) puts the BOS token first.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// The vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
}
