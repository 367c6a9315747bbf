//! A conversation → (ids, loss mask), by prefix rendering, plus the over-length rule.

use super::{DataOptions, Example, LossOn, TemplateMode};
use crate::tokenize::{ChatTemplate, Message, TextTokenizer};

/// What became of one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Built {
    Example(Example),
    /// Even the scored tokens plus one token of context exceed `max_seq`.
    TooLong {
        tokens: usize,
        scored_span: usize,
    },
}

/// Build the training example for one conversation (`line` is copied into the example).
///
/// **Model template** (`TemplateMode::Model`): the ids are the tokenization of the chat template
/// rendering of `messages[..=last assistant]` (no generation prompt); later non-assistant turns
/// carry no loss and are dropped. For every assistant turn `i`, `messages[..i]` is rendered with
/// the generation prompt; its ids must be a prefix of the full ids, else the record is rejected
/// ("prefix does not tokenize as a prefix"). The scored span starts at the end of that prefix
/// and ends at the last end-of-turn token (`tok.eot_id`, e.g. `<|im_end|>`) inside the turn,
/// whose extent is bounded by rendering `messages[..=i]`; whatever the template writes after the
/// end-of-turn token (ChatML's `\n`) is not scored. A turn with no end-of-turn token is scored
/// to its end.
///
/// **Raw template** (`TemplateMode::Raw`): no chat template. The prompt is the contents of all
/// messages before the last assistant turn joined by `"\n\n"` (for prompt/response records: the
/// prompt itself) and the response is the last assistant turn. `ids = [BOS if tok.add_bos] +
/// encode(prompt) + encode(response) + [EOS]`, each part tokenized on its own; the response
/// tokens and the EOS are scored (so the model learns to stop).
///
/// **Loss placement**: `LossOn::Response` uses the mask above; `LossOn::All` scores every token
/// after the first (joint objective) on the same ids. The response mask is still built (and its
/// checks still apply) so both modes keep the same records and cut over-long ones the same way.
///
/// **Over-long** (`ids.len() > max_seq`): tokens after the last scored one are dropped, then the
/// prompt is cut from the left; if the scored span plus one token of context does not fit, the
/// record is `Built::TooLong`.
pub fn build_example(
    messages: &[Message],
    tok: &TextTokenizer,
    chat: &ChatTemplate,
    opts: &DataOptions,
    line: usize,
) -> Result<Built, String> {
    super::records::check_conversation(messages)?;
    let (ids, mut mask) = match opts.template {
        TemplateMode::Model => model_template(messages, tok, chat)?,
        TemplateMode::Raw => raw_template(messages, tok)?,
    };
    if !mask.iter().any(|&m| m) {
        return Err("empty mask: no token is scored".into());
    }
    let (ids, mask_trunc) = match truncate(&ids, &mask, opts.max_seq) {
        Some(cut) => cut,
        None => {
            let first = mask.iter().position(|&m| m).unwrap_or(0);
            let last = mask.iter().rposition(|&m| m).unwrap_or(0);
            return Ok(Built::TooLong {
                tokens: ids.len(),
                scored_span: last + 1 - first,
            });
        }
    };
    mask = mask_trunc;
    if opts.loss_on == LossOn::All {
        mask = (0..ids.len()).map(|t| t > 0).collect();
    }
    Ok(Built::Example(Example { ids, mask, line }))
}

fn encode(tok: &TextTokenizer, text: &str) -> Result<Vec<u32>, String> {
    tok.encode(text).map_err(|e| e.to_string())
}

fn render(chat: &ChatTemplate, msgs: &[Message], gen: bool) -> Result<String, String> {
    chat.render(msgs, gen).map_err(|e| e.to_string())
}

/// (ids, response mask) from the model's chat template, by prefix rendering.
fn model_template(
    messages: &[Message],
    tok: &TextTokenizer,
    chat: &ChatTemplate,
) -> Result<(Vec<u32>, Vec<bool>), String> {
    let last = messages
        .iter()
        .rposition(|m| m.role == "assistant")
        .ok_or("no assistant turn")?;
    let ids = encode(tok, &render(chat, &messages[..=last], false)?)?;
    let mut mask = vec![false; ids.len()];
    for (i, m) in messages[..=last].iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let start = encode(tok, &render(chat, &messages[..i], true)?)?;
        if !ids.starts_with(&start) {
            return Err(format!(
                "prefix does not tokenize as a prefix (assistant turn messages[{i}]: {})",
                first_difference(&ids, &start)
            ));
        }
        let through = encode(tok, &render(chat, &messages[..=i], false)?)?;
        if through.len() <= start.len() {
            return Err(format!(
                "empty mask: assistant turn messages[{i}] renders no tokens"
            ));
        }
        if !ids.starts_with(&through) {
            return Err(format!(
                "prefix does not tokenize as a prefix (conversation through messages[{i}]: {})",
                first_difference(&ids, &through)
            ));
        }
        let (s, e) = (start.len(), through.len());
        let end = match tok.eot_id {
            Some(eot) => ids[s..e]
                .iter()
                .rposition(|&t| t == eot)
                .map_or(e, |p| s + p + 1),
            None => e,
        };
        mask[s..end].iter_mut().for_each(|m| *m = true);
    }
    // Position 0 has nothing to be predicted from.
    if let Some(m0) = mask.first_mut() {
        *m0 = false;
    }
    Ok((ids, mask))
}

/// (ids, response mask) with no template; see `build_example`.
fn raw_template(
    messages: &[Message],
    tok: &TextTokenizer,
) -> Result<(Vec<u32>, Vec<bool>), String> {
    let last = messages
        .iter()
        .rposition(|m| m.role == "assistant")
        .ok_or("no assistant turn")?;
    let prompt: Vec<&str> = messages[..last]
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    let prompt = prompt.join("\n\n");
    let response = &messages[last].content;
    let eos = tok
        .eos_id
        .ok_or("the raw template needs an EOS token, and the tokenizer has none")?;
    // Prompt and response are tokenized apart and their ids concatenated (as TRL does for
    // prompt-completion data), so a boundary that BPE would merge ("th" + "e end") is no error:
    // the model sees the response's own tokenization, the one it produces when it generates
    // after the prompt.
    let p = encode(tok, &prompt)?;
    let r = encode(tok, response)?;
    let mut ids = Vec::with_capacity(p.len() + r.len() + 2);
    if tok.add_bos {
        ids.extend(tok.bos_id);
    }
    let n_prompt = ids.len() + p.len();
    ids.extend_from_slice(&p);
    ids.extend_from_slice(&r);
    ids.push(eos);
    let mask = (0..ids.len()).map(|t| t >= n_prompt && t > 0).collect();
    Ok((ids, mask))
}

/// Where `prefix` stops matching `full`, for error messages.
fn first_difference(full: &[u32], prefix: &[u32]) -> String {
    let k = full.iter().zip(prefix).take_while(|(a, b)| a == b).count();
    if k == prefix.len() {
        format!(
            "prefix of {} tokens is longer than the {} of the whole",
            prefix.len(),
            full.len()
        )
    } else {
        format!(
            "token {k} is {} in the prefix but {:?} in the whole",
            prefix[k],
            full.get(k)
        )
    }
}

/// Fit (ids, mask) into `max_seq`: drop tokens after the last scored one, then cut from the
/// left, keeping every scored token and at least one token before the first. None when that is
/// impossible. Unchanged when it already fits.
pub fn truncate(ids: &[u32], mask: &[bool], max_seq: usize) -> Option<(Vec<u32>, Vec<bool>)> {
    if ids.len() <= max_seq {
        return Some((ids.to_vec(), mask.to_vec()));
    }
    let first = mask.iter().position(|&m| m)?;
    let last = mask.iter().rposition(|&m| m)?;
    // first >= 1 always (mask[0] is false), so the context token exists.
    if last + 1 - first + 1 > max_seq {
        return None;
    }
    let end = last + 1;
    let start = end.saturating_sub(max_seq);
    let mut m = mask[start..end].to_vec();
    m[0] = false;
    Some((ids[start..end].to_vec(), m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_rule() {
        let ids: Vec<u32> = (0..10).collect();
        // prompt 0..6, scored 6..9, trailing 9
        let mask: Vec<bool> = (0..10).map(|t| (6..9).contains(&t)).collect();
        assert_eq!(truncate(&ids, &mask, 10).unwrap().0, ids);
        let (i, m) = truncate(&ids, &mask, 5).unwrap();
        assert_eq!(i, vec![4, 5, 6, 7, 8]);
        assert_eq!(m, vec![false, false, true, true, true]);
        let (i, m) = truncate(&ids, &mask, 4).unwrap();
        assert_eq!(i, vec![5, 6, 7, 8]);
        assert_eq!(m, vec![false, true, true, true]);
        assert!(truncate(&ids, &mask, 3).is_none());
    }
}
