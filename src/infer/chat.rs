//! A multi-turn conversation with one model: the messages so far, the rendered prompt, and a KV
//! cache kept across turns. Each turn renders the whole conversation with the chat template,
//! reuses the cached keys/values of the longest token prefix it shares with what the cache
//! holds, and runs only the rest through the model.

use super::generate::{generate_cached, GenerateOptions};
use super::sampling::Rng;
use crate::error::{Error, Result};
use crate::loaded::LoadedModel;
use crate::model::forward::KvCache;
use crate::model::lora::LoraSet;
use crate::tokenize::chat::Message;
use std::sync::atomic::AtomicBool;

/// What one turn did.
#[derive(Debug, Clone)]
pub struct Turn {
    /// The rendered prompt the reply was generated after.
    pub prompt: String,
    /// Its token count, and how many of them came from the cache.
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    /// The reply's ids (no stop token) and text.
    pub ids: Vec<u32>,
    pub text: String,
    /// Ctrl-C ended the reply.
    pub interrupted: bool,
    /// Earlier user/assistant messages dropped to fit the model's context.
    pub dropped_messages: usize,
}

pub struct ChatSession<'m> {
    lm: &'m LoadedModel,
    lora: Option<LoraSet>,
    /// The system message; `None` leaves the template's default (if it has one).
    pub system: Option<String>,
    /// The user and assistant messages so far, oldest first.
    pub messages: Vec<Message>,
    /// No template: the turns' texts joined by newlines (the model continues plain text).
    raw: bool,
    cache: KvCache,
    /// The ids whose keys/values `cache` holds.
    cached: Vec<u32>,
    rng: Rng,
}

impl<'m> ChatSession<'m> {
    pub fn new(lm: &'m LoadedModel, lora: Option<LoraSet>, raw: bool, seed: u64) -> Self {
        ChatSession {
            lm,
            lora,
            system: None,
            messages: Vec::new(),
            raw,
            cache: KvCache::new(lm.model.layers.len()),
            cached: Vec::new(),
            rng: Rng::new(seed),
        }
    }

    /// Forget the conversation (the system message stays).
    pub fn reset(&mut self) {
        self.messages.clear();
    }

    /// Use another adapter (`None`: the base model). The cache is dropped: its keys and values
    /// were computed with the old one.
    pub fn set_adapter(&mut self, lora: Option<LoraSet>) {
        self.lora = lora;
        self.drop_cache();
    }

    pub fn model(&self) -> &'m LoadedModel {
        self.lm
    }

    pub fn adapter(&self) -> Option<&LoraSet> {
        self.lora.as_ref()
    }

    fn drop_cache(&mut self) {
        self.cache = KvCache::new(self.lm.model.layers.len());
        self.cached.clear();
    }

    /// The conversation as the template sees it: system (if set), then the messages.
    pub fn conversation(&self, pending_user: Option<&str>) -> Vec<Message> {
        let mut msgs = Vec::with_capacity(self.messages.len() + 2);
        if let Some(s) = &self.system {
            msgs.push(Message::new("system", s.clone()));
        }
        msgs.extend(self.messages.iter().cloned());
        if let Some(u) = pending_user {
            msgs.push(Message::new("user", u));
        }
        msgs
    }

    /// The prompt text for the conversation plus `pending_user`, opening an assistant turn.
    pub fn render(&self, pending_user: Option<&str>) -> Result<String> {
        let msgs = self.conversation(pending_user);
        if self.raw {
            let mut s = String::new();
            for m in &msgs {
                s.push_str(&m.content);
                s.push('\n');
            }
            Ok(s)
        } else {
            self.lm.chat.render(&msgs, true)
        }
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let tok = &self.lm.tokenizer;
        let mut ids = Vec::new();
        if self.raw && tok.add_bos {
            ids.extend(tok.bos_id);
        }
        ids.extend(tok.encode(text)?);
        Ok(ids)
    }

    /// Answer `user`: render, reuse the cached prefix, generate (calling `on_token` for each
    /// new id), and append the user message and the reply to the conversation. An interrupted
    /// reply is kept as far as it got.
    pub fn reply(
        &mut self,
        user: &str,
        opts: &GenerateOptions,
        stop: Option<&AtomicBool>,
        on_token: impl FnMut(u32) -> Result<()>,
    ) -> Result<Turn> {
        let limit = self.lm.model.config.max_positions;
        // Room for the reply: --max-tokens, but never more than half the context.
        let room = opts.max_tokens.min(limit / 2).max(1);
        let mut dropped = 0;
        let (prompt, ids) = loop {
            let prompt = self.render(Some(user))?;
            let ids = self.encode(&prompt)?;
            if ids.len() + room <= limit || self.messages.len() < 2 {
                break (prompt, ids);
            }
            // Too long: forget the oldest exchange.
            self.messages.drain(..2);
            dropped += 2;
        };
        if ids.is_empty() {
            return Err(Error::Usage("the message is empty".into()));
        }
        if ids.len() >= limit {
            return Err(Error::Usage(format!(
                "this message makes a prompt of {} tokens; the model's context is {limit}",
                ids.len()
            )));
        }
        let mut common = self
            .cached
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count();
        // At least one id must run to give the next token's logits.
        common = common.min(ids.len() - 1);
        self.cache.truncate(common);
        self.cached.truncate(common);
        let model = &self.lm.model;
        let result = generate_cached(
            model,
            self.lora.as_ref(),
            &mut self.cache,
            &ids[common..],
            opts,
            &mut self.rng,
            stop,
            on_token,
        );
        let (out, interrupted) = match result {
            Ok(r) => r,
            Err(e) => {
                self.drop_cache();
                return Err(e);
            }
        };
        self.cached.extend_from_slice(&ids[common..]);
        self.cached.extend_from_slice(&out);
        if self.cached.len() != self.cache.len {
            // The last emitted token may not have run (context full): keep the two in step.
            let n = self.cache.len.min(self.cached.len());
            self.cached.truncate(n);
            self.cache.truncate(n);
        }
        let text = self.lm.tokenizer.decode(&out)?;
        self.messages.push(Message::new("user", user));
        self.messages.push(Message::new("assistant", text.clone()));
        Ok(Turn {
            prompt,
            prompt_tokens: ids.len(),
            reused_tokens: common,
            ids: out,
            text,
            interrupted,
            dropped_messages: dropped,
        })
    }
}
