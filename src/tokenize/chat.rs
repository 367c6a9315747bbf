//! Chat templates: the model's own Jinja template rendered with minijinja, configured like
//! transformers' `apply_chat_template` (trim_blocks, lstrip_blocks, loop controls, Python
//! string methods, `raise_exception`, `strftime_now`, a Python-style `tojson`).

use super::template_limits::{self, BoundedOutput, MAX_RENDER_BYTES};
use super::{template_growth, template_namespaces, template_watchdog};
use crate::error::{Error, Result};
use minijinja::value::{Kwargs, Value as JValue};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// ChatML, used when a model ships no template.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const NAME: &str = "chat_template";

/// Gemma's turn format (the instruction-tuned Gemma 3 template, string contents): BOS, then
/// `<start_of_turn>{user|model}\n{content, trimmed}<end_of_turn>\n` per message, a system
/// message folded into the first user turn, `<start_of_turn>model\n` to open a reply.
pub const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";
/// Bounds for rendering a template that came with a model (a stranger's code, in effect).
/// Fuel counts VM instructions per render: a real template takes tens per message (a few
/// thousand for a long conversation with tools), so 250,000 leaves room for conversations of
/// thousands of turns and stops a runaway loop in a fraction of a second. Nesting (macros,
/// recursive loops, includes) is capped well below where the stack could overflow; real
/// templates nest a few levels. minijinja itself refuses ranges of over 100,000 items and a
/// string repeated past 100 MB; template_limits.rs caps the output and every indent width. What
/// none of these can bound (fuel counts instructions, not bytes or the work inside one: a value
/// doubled by `{% set ns.s = ns.s ~ ns.s %}` in a loop, a list repeated 10^9 times and then
/// compared) is bounded from outside by template_watchdog.rs: time and memory per render.
pub const TEMPLATE_FUEL: u64 = 250_000;
/// Values a template builds can nest without limit (`{% set ns.x = [ns.x] %}` in a loop, one
/// level per few instructions), and minijinja drops, prints and compares them recursively, a
/// few hundred bytes of stack per level: 30,000 levels overflowed an 8 MB stack (fuzz finding,
/// issue 16). Fuel bounds the depth (each level costs at least one instruction, so at most
/// about `TEMPLATE_FUEL` levels); every render runs on its own thread with this much stack,
/// which covers that depth at up to 2 KB a level. Only the pages touched are ever resident.
pub const TEMPLATE_STACK_BYTES: usize = 512 << 20;
pub const TEMPLATE_RECURSION_LIMIT: usize = 64;
/// The longest template source accepted: nesting depth is bounded by length (at least two
/// bytes a level), so 1 MB is at most 500,000 levels, which compiling, checking and dropping
/// fit in `TEMPLATE_STACK_BYTES` at a few hundred bytes a level.
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;

/// A compiled chat template plus the special-token strings it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
    /// True when this is the built-in ChatML fallback, not the model's own template.
    pub is_fallback: bool,
    /// Why the model's own template cannot be used (it does not compile, or the load-time
    /// checks refuse it): every render fails with this, and `--template raw`/`gemma` still
    /// work with the model.
    pub refused: Option<String>,
}

impl ChatTemplate {
    /// Compile a Jinja chat template. Parsing and compiling recurse once per level of nesting
    /// in the source (`{{ 1+1+…+1 }}` is 50,000 levels in 100 KB, which overflowed an 8 MB
    /// stack inside minijinja's compiler), so this runs on a thread with the render's
    /// `TEMPLATE_STACK_BYTES` stack, and sources over `MAX_TEMPLATE_BYTES` are refused.
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(Error::Template(format!(
                "the template is {} bytes, over the {} KB edge-sft accepts (real chat templates \
                 are a few KB)",
                source.len(),
                MAX_TEMPLATE_BYTES >> 10
            )));
        }
        // minijinja folds constant expressions while compiling (`[1] * 10**9 == [1] * 10**9`
        // runs here, not at render), so compiling is watched like rendering.
        let env = on_template_thread("compiling", || compile(source))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.unwrap_or("").to_string(),
            eos_token: eos_token.unwrap_or("").to_string(),
            is_fallback: false,
            refused: None,
        })
    }

    /// The model's template, which cannot be used: `why` says so at every render.
    pub fn unusable(source: &str, why: String) -> Self {
        ChatTemplate {
            env: Environment::new(),
            source: source.to_string(),
            bos_token: String::new(),
            eos_token: String::new(),
            is_fallback: false,
            refused: Some(why),
        }
    }

    /// The built-in ChatML template.
    pub fn chatml(bos_token: Option<&str>, eos_token: Option<&str>) -> Self {
        let mut t = Self::new(CHATML_TEMPLATE, bos_token, eos_token)
            .expect("built-in ChatML template compiles");
        t.is_fallback = true;
        t
    }

    /// The built-in Gemma turn format (`--template gemma`).
    pub fn gemma(bos_token: Option<&str>, eos_token: Option<&str>) -> Self {
        let mut t = Self::new(GEMMA_TEMPLATE, bos_token, eos_token)
            .expect("built-in Gemma template compiles");
        t.is_fallback = true;
        t
    }

    /// The tokenizer's own template; when it has none, the Gemma turn format for a vocabulary
    /// with `<start_of_turn>` (Gemma base models), ChatML otherwise.
    pub fn for_tokenizer(tok: &super::TextTokenizer) -> Result<Self> {
        let (bos, eos) = (tok.bos_token.as_deref(), tok.eos_token.as_deref());
        match &tok.chat_template {
            Some(src) => Self::new(src, bos, eos),
            None if tok.token_to_id("<start_of_turn>").is_some() => Ok(Self::gemma(bos, eos)),
            None => Ok(Self::chatml(bos, eos)),
        }
    }

    /// A short name for messages: "ChatML" or "Gemma" for the built-in ones.
    pub fn fallback_name(&self) -> Option<&'static str> {
        match self.source.as_str() {
            _ if !self.is_fallback => None,
            GEMMA_TEMPLATE => Some("Gemma"),
            _ => Some("ChatML"),
        }
    }

    /// Render `messages`; with `add_generation_prompt` the template opens an assistant turn.
    /// Runs on a thread of its own with a `TEMPLATE_STACK_BYTES` stack (see there), watched
    /// by `template_watchdog`, which ends the process if the render passes its time or memory
    /// bound.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        if let Some(why) = &self.refused {
            return Err(Error::Template(why.clone()));
        }
        on_template_thread("rendering", || {
            self.render_here(messages, add_generation_prompt)
        })
    }

    fn render_here(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::Template(describe(&e)))?;
        let mut out = BoundedOutput::default();
        let rendered = tmpl.render_captured_to(
            minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                // transformers passes these as None; `tools is none` must hold.
                tools => (),
                documents => (),
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            },
            &mut out,
        );
        if out.overflowed {
            return Err(Error::Template(format!(
                "the template printed more than {} MB for {} messages; refusing it",
                MAX_RENDER_BYTES >> 20,
                messages.len()
            )));
        }
        rendered.map_err(|e| Error::Template(describe(&e)))?;
        String::from_utf8(out.bytes)
            .map_err(|_| Error::Template("the template printed invalid UTF-8".to_string()))
    }
}

/// Runs `work` (compiling or rendering, `doing`) on a thread with a `TEMPLATE_STACK_BYTES`
/// stack, watched by `template_watchdog`, which ends the process if it passes its time or
/// memory bound; a panic there is an error here.
fn on_template_thread<T: Send>(doing: &str, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("chat-template".to_string())
            .stack_size(TEMPLATE_STACK_BYTES)
            .spawn_scoped(scope, move || {
                let _ = tx.send(work());
            })
            .map_err(|e| {
                Error::Template(format!(
                    "cannot start a thread for {doing} the template ({} MB stack): {e}",
                    TEMPLATE_STACK_BYTES >> 20
                ))
            })?;
        let done = template_watchdog::wait(&rx, doing);
        // Joined here so that a panic on the thread is an error, not the scope's.
        match (worker.join(), done) {
            (Ok(()), Some(r)) => r,
            _ => Err(Error::Template(format!("{doing} the template panicked"))),
        }
    })
}

/// The environment with edge-sft's limits and filters, and `source` compiled into it, if it
/// passes `template_namespaces::check`.
fn compile(source: &str) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    // transformers compiles with trim_blocks=True, lstrip_blocks=True.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_recursion_limit(TEMPLATE_RECURSION_LIMIT);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_filter("indent", template_limits::indent);
    env.set_formatter(template_limits::bounded_formatter);
    env.add_filter("string", template_limits::string);
    env.add_filter("join", template_limits::join);
    env.add_filter("pprint", template_limits::pprint);
    env.add_template_owned(NAME, source.to_string())
        .map_err(|e| Error::Template(format!("cannot compile: {}", describe(&e))))?;
    template_namespaces::check(source)
        .and_then(|()| template_growth::check(source))
        .map_err(|why| Error::Template(format!("refused: {why}")))?;
    Ok(env)
}

/// minijinja errors keep their cause in a chain; show all of it.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

fn raise_exception(msg: String) -> std::result::Result<JValue, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// Python `json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=...)`, as transformers'
/// `tojson` does (separators ", " and ": ", or "," and ": " with an indent). Walks the minijinja
/// value directly so maps keep their insertion order, as Python dicts do.
fn tojson(value: JValue, kwargs: Kwargs) -> std::result::Result<JValue, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    if let Some(w) = indent {
        template_limits::checked_indent(w, "tojson")?;
    }
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<JValue> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    py_dumps(&value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(JValue::from_safe_string(out))
}

fn py_dumps(
    v: &JValue,
    indent: Option<usize>,
    sort: bool,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    use minijinja::value::ValueKind as K;
    if depth > template_limits::MAX_JSON_DEPTH || out.len() > MAX_RENDER_BYTES {
        // A namespace can hold itself (`{% set ns.s = ns %}`): without this the walk recurses
        // until the stack overflows (fuzz finding, issue 16).
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "tojson: value nested deeper than {} levels or longer than {} MB (does a namespace hold itself?)",
                template_limits::MAX_JSON_DEPTH,
                MAX_RENDER_BYTES >> 20
            ),
        ));
    }
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    match v.kind() {
        K::Undefined | K::None => out.push_str("null"),
        K::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        K::Number => match (v.as_i64(), f64::try_from(v.clone())) {
            (Some(i), _) => out.push_str(&i.to_string()),
            (None, Ok(f)) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 => {
                out.push_str(&format!("{f:.1}"))
            }
            (None, Ok(f)) if f.is_finite() => out.push_str(&format!("{f}")),
            (None, Ok(f)) if f.is_nan() => out.push_str("NaN"),
            (None, Ok(f)) => out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" }),
            (None, Err(_)) => out.push_str(&v.to_string()),
        },
        K::String => out.push_str(&quote(v.as_str().unwrap_or_default())),
        K::Seq | K::Iterable => {
            let items: Vec<JValue> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                py_dumps(item, indent, sort, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        K::Map => {
            let mut keys: Vec<JValue> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if sort {
                keys.sort_by_key(|k| k.to_string());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&quote(&k.to_string()));
                out.push_str(": ");
                py_dumps(&v.get_item(k)?, indent, sort, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => out.push_str(&quote(&v.to_string())),
    }
    Ok(())
}

/// `strftime_now(fmt)`: the current UTC time, for templates that print today's date
/// (Llama 3.1). Supports %Y %y %m %d %b %B %H %M %S %%.
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format_time(secs, &fmt)
}

fn format_time(unix_secs: i64, fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let (days, rem) = (unix_secs.div_euclid(86_400), unix_secs.rem_euclid(86_400));
    // Civil-from-days (H. Hinnant): proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<Message> {
        vec![
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello!"),
        ]
    }

    #[test]
    fn gemma_renders_like_the_instruction_tuned_template() {
        let t = ChatTemplate::gemma(Some("<bos>"), Some("<eos>"));
        let m = vec![
            Message::new("system", "Be brief."),
            Message::new("user", " Hi "),
            Message::new("assistant", "Hello!"),
        ];
        assert_eq!(
            t.render(&m, false).unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        );
        assert_eq!(
            t.render(&m[1..2], true).unwrap(),
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
        assert!(t.render(&m[2..], false).is_err(), "roles must alternate");
    }

    #[test]
    fn chatml_renders() {
        let t = ChatTemplate::chatml(None, None);
        assert_eq!(
            t.render(&msgs(), false).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        );
        assert_eq!(
            t.render(&msgs()[..1], true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn trim_and_lstrip_blocks_like_transformers() {
        // With trim_blocks the newline after a block tag is dropped; with lstrip_blocks the
        // indentation before it is dropped.
        let src = "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content.strip() }}]\n  {% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(src, None, None).unwrap();
        let out = t
            .render(
                &[Message::new("user", "  a  "), Message::new("user", "b")],
                false,
            )
            .unwrap();
        assert_eq!(out, "[a]\n[b]\n");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let src = "{% if messages[0].role != 'system' %}{{ raise_exception('need a system prompt') }}{% endif %}";
        let t = ChatTemplate::new(src, None, None).unwrap();
        let err = t.render(&msgs(), false).unwrap_err().to_string();
        assert!(err.contains("need a system prompt"), "{err}");
    }

    #[test]
    fn bos_and_loop_controls() {
        let src = "{{ bos_token }}{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}{{ eos_token }}";
        let t = ChatTemplate::new(src, Some("<s>"), Some("</s>")).unwrap();
        assert_eq!(t.render(&msgs(), false).unwrap(), "<s>Hi</s>");
    }

    #[test]
    fn tojson_is_python_style() {
        let t = ChatTemplate::new(
            "{{ messages[0] | tojson }}|{{ [1, 'é'] | tojson(indent=2) }}",
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            t.render(&msgs(), false).unwrap(),
            "{\"role\": \"user\", \"content\": \"Hi\"}|[\n  1,\n  \"é\"\n]"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(format_time(0, "%d %b %Y %H:%M:%S"), "01 Jan 1970 00:00:00");
        // 2024-02-29 12:34:56 UTC
        assert_eq!(
            format_time(1_709_210_096, "%Y-%m-%d %B %y %H:%M:%S %%"),
            "2024-02-29 February 24 12:34:56 %"
        );
    }
}
