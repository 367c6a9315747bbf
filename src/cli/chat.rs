//! `edge-sft chat`: a conversation in the model's chat template, replies streamed as they are
//! generated, with commands to reset, set the system message and swap the adapter.

use edge_sft::error::Error;
use edge_sft::infer::chat::{ChatSession, Turn};
use edge_sft::infer::generate::GenerateOptions;
use edge_sft::infer::stream::TextStream;
use edge_sft::loaded::LoadedModel;
use edge_sft::Result;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const LONG_ABOUT: &str = "Chat with a model, with or without an adapter. Each line you type \
is a user turn; the reply is streamed as it is generated, in the model's chat template, and the \
conversation is kept (the KV cache is reused across turns). Ctrl-C stops a reply; at the prompt \
it quits, as Ctrl-D and /quit do.\n\n\
Commands:\n  /reset          forget the conversation\n  \
/system TEXT    set the system message (/system alone: the template's default)\n  \
/adapter PATH   switch to another adapter (a PEFT folder or adapter.gguf); /adapter none: the base model\n  \
/quit           leave\n\n\
Compare the base model and a tuned adapter on the same question:\n  \
edge-sft chat --model models/SmolLM2-135M-Instruct.Q4_1.gguf --adapter runs/demo\n  \
>>> Book a table for 2 at Luigi's on Friday at 8pm.\n  \
>>> /adapter none\n  >>> /reset\n  >>> Book a table for 2 at Luigi's on Friday at 8pm.\n\n\
Standard input may be a file or a pipe: one turn (or command) per line, no prompts.";

#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file or a Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// An adapter to start with: a PEFT folder (e.g. a tune --out) or a GGUF LoRA file.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The system message (otherwise the template's default, if any).
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: super::common::SamplingArgs,
    /// How the conversation becomes text: the model's chat template, or raw (the turns' texts
    /// joined by newlines).
    #[arg(long, value_enum, default_value = "model")]
    pub template: super::common::TemplateArg,
    /// After each reply, print a JSON line to stderr with the rendered prompt, the reply and how
    /// many prompt tokens came from the cache (to check a template).
    #[arg(long)]
    pub show_prompt: bool,
    /// Worker threads (default: physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// What a line of input asks for.
enum Line<'a> {
    Say(&'a str),
    Reset,
    System(Option<&'a str>),
    Adapter(&'a str),
    Quit,
    Help,
    Unknown(&'a str),
}

fn parse(line: &str) -> Line<'_> {
    let Some(cmd) = line.strip_prefix('/') else {
        return Line::Say(line);
    };
    let (name, rest) = match cmd.split_once(char::is_whitespace) {
        Some((n, r)) => (n, r.trim()),
        None => (cmd, ""),
    };
    match name {
        "reset" | "clear" => Line::Reset,
        "system" => Line::System((!rest.is_empty()).then_some(rest)),
        "adapter" => Line::Adapter(rest),
        "quit" | "exit" | "bye" => Line::Quit,
        "help" | "?" => Line::Help,
        _ => Line::Unknown(name),
    }
}

pub fn run(a: Args) -> Result<()> {
    if a.sampling.max_tokens == 0 {
        return Err(Error::Usage("--max-tokens must be at least 1".into()));
    }
    super::init_threads(a.threads)?;
    let mut lm = LoadedModel::open(&a.model)?;
    a.template.apply(&mut lm)?;
    let lora = a
        .adapter
        .as_deref()
        .map(|d| lm.read_adapter(d))
        .transpose()?;
    let tok = &lm.tokenizer;
    let raw = matches!(a.template, super::common::TemplateArg::Raw);
    let mut stop_ids: Vec<u32> = tok.eot_id.into_iter().chain(tok.eos_id).collect();
    stop_ids.dedup();
    let opts = a.sampling.options(stop_ids)?;
    let mut session = ChatSession::new(&lm, lora, raw, a.sampling.seed);
    session.system = a.system.clone();

    // Ctrl-C while a reply is generated sets `stop` and ends the reply; at the prompt (`idle`)
    // it ends the program, as a terminal user expects.
    let stop = Arc::new(AtomicBool::new(false));
    let idle = Arc::new(AtomicBool::new(true));
    let sig = signal_hook::consts::SIGINT;
    signal_hook::flag::register_conditional_shutdown(sig, 130, idle.clone())
        .and_then(|_| signal_hook::flag::register(sig, stop.clone()))
        .map_err(|e| Error::Usage(format!("signal handler: {e}")))?;

    let tty = std::io::stdin().is_terminal();
    let note = Note {
        ansi: tty && std::io::stderr().is_terminal(),
    };
    if tty {
        let what = match &a.adapter {
            Some(p) => format!("adapter {}", p.display()),
            None => "no adapter".into(),
        };
        note.say(&format!(
            "chatting with {} ({what}); /help for commands, Ctrl-D to quit",
            a.model.display()
        ));
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut line = String::new();
    let mut turn_no = 0usize;
    loop {
        if tty {
            print!(">>> ");
            let _ = std::io::stdout().flush();
        }
        line.clear();
        idle.store(true, Ordering::SeqCst);
        let n = input
            .read_line(&mut line)
            .map_err(|e| Error::Usage(format!("reading standard input: {e}")))?;
        idle.store(false, Ordering::SeqCst);
        stop.store(false, Ordering::SeqCst);
        if n == 0 {
            if tty {
                println!();
            }
            return Ok(());
        }
        let text = line.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        match parse(text) {
            Line::Quit => return Ok(()),
            Line::Help => note.say(LONG_ABOUT.split("\n\nCompare").next().unwrap_or("")),
            Line::Unknown(c) => note.say(&format!("unknown command /{c}; /help lists them")),
            Line::Reset => {
                session.reset();
                note.say("conversation cleared");
            }
            Line::System(s) => {
                session.system = s.map(str::to_string);
                note.say(match s {
                    Some(_) => "system message set",
                    None => "system message cleared (the template's default applies)",
                });
            }
            Line::Adapter(p) => match p {
                "" => note.say(match session.adapter() {
                    Some(_) => "an adapter is in use; /adapter PATH or /adapter none",
                    None => "no adapter (the base model); /adapter PATH to load one",
                }),
                "none" | "base" => {
                    session.set_adapter(None);
                    note.say("adapter: none (the base model)");
                }
                path => match lm.read_adapter(Path::new(path)) {
                    Ok(l) => {
                        session.set_adapter(Some(l));
                        note.say(&format!("adapter: {path}"));
                    }
                    Err(e) => note.say(&format!("cannot load that adapter: {e}")),
                },
            },
            Line::Say(user) => {
                turn_no += 1;
                match say(&mut session, user, &opts, &stop) {
                    Ok(turn) => {
                        if turn.interrupted {
                            note.say("(stopped)");
                        }
                        if turn.dropped_messages > 0 {
                            note.say(&format!(
                                "(the {} oldest messages were dropped to fit the context)",
                                turn.dropped_messages
                            ));
                        }
                        if a.show_prompt {
                            show(turn_no, &turn);
                        }
                    }
                    // A turn that fails (too long, a numeric fault) is reported; the chat goes on.
                    Err(e) => note.say(&format!("error: {e}")),
                }
            }
        }
    }
}

/// Generate one reply, streaming it to stdout.
fn say(
    session: &mut ChatSession,
    user: &str,
    opts: &GenerateOptions,
    stop: &AtomicBool,
) -> Result<Turn> {
    let tok = &session_tokenizer(session);
    let mut stream = TextStream::new(tok);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let turn = session.reply(user, opts, Some(stop), |id| {
        let s = stream.push(id)?;
        if !s.is_empty() {
            let _ = out.write_all(s.as_bytes());
            let _ = out.flush();
        }
        Ok(())
    })?;
    let (rest, _) = stream.finish()?;
    let _ = out.write_all(rest.as_bytes());
    let _ = writeln!(out);
    let _ = out.flush();
    Ok(turn)
}

fn session_tokenizer<'m>(s: &ChatSession<'m>) -> &'m edge_sft::tokenize::TextTokenizer {
    &s.model().tokenizer
}

fn show(turn_no: usize, t: &Turn) {
    let v = serde_json::json!({
        "turn": turn_no,
        "prompt": t.prompt,
        "reply": t.text,
        "reply_ids": t.ids,
        "prompt_tokens": t.prompt_tokens,
        "reused_tokens": t.reused_tokens,
        "interrupted": t.interrupted,
    });
    eprintln!("{v}");
}

/// Messages for the person at the keyboard, on stderr (dimmed on a terminal).
struct Note {
    ansi: bool,
}

impl Note {
    fn say(&self, msg: &str) {
        if self.ansi {
            eprintln!("\x1b[2m{msg}\x1b[0m");
        } else {
            eprintln!("{msg}");
        }
    }
}
