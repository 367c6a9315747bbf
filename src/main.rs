//! The `edge-sft` command line: a thin shell over the library.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

mod cli;

#[derive(Parser)]
#[command(
    name = "edge-sft",
    version,
    about = "Fine-tune small language models on the device that owns the data",
    long_about = "edge-sft memory-maps a quantized model (GGUF, or a Hugging Face folder), keeps it \
frozen, and trains LoRA adapters on your prompt→response data with the loss on response tokens \
only; it also scores data sets and generates, with or without an adapter.\n\n\
Start with:\n  edge-sft inspect MODEL.gguf\n  edge-sft eval --model MODEL.gguf --data data.jsonl\n  \
edge-sft tune --lora --model MODEL.gguf --data train.jsonl --eval-data heldout.jsonl --out runs/me\n  \
edge-sft generate --model MODEL.gguf --adapter runs/me --prompt \"What is the capital of France?\"\n  \
edge-sft chat --model MODEL.gguf --adapter runs/me\n  \
edge-sft merge --model MODEL.gguf --adapter runs/me --out MODEL-me.gguf"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up and matched once: boxing the larger argument structs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Show a model's architecture, sizes, tensor types and tokenizer.
    Inspect(cli::inspect::Args),
    /// Score a JSONL data set: Σ log Pr(y|x), mean NLL per response token, perplexity.
    Eval(cli::eval::Args),
    /// Generate a reply to a prompt with the model's chat template.
    Generate(cli::generate::Args),
    /// Chat with a model (and an adapter, hot-swappable): multi-turn, streamed.
    #[command(long_about = cli::chat::LONG_ABOUT)]
    Chat(cli::chat::Args),
    /// Train LoRA adapters on prompt→response data (loss on response tokens only).
    Tune(cli::tune::Args),
    /// Draw a run's loss figure (or overlay several runs) and print a summary table.
    #[command(long_about = cli::report::LONG_ABOUT)]
    Report(cli::report::Args),
    /// Convert a LoRA adapter between PEFT and GGUF (llama.cpp --lora, ollama ADAPTER).
    Export(cli::export::Args),
    /// Fold a LoRA adapter into its base model and write one standalone GGUF.
    #[command(long_about = cli::merge::LONG_ABOUT)]
    Merge(cli::merge::Args),
    /// Personalize on the device: watch an inbox of JSONL pairs, train when on charge and idle,
    /// gate and publish adapters.
    Daemon(cli::daemon::Args),
    /// List the daemon's adapter versions or roll `current` back.
    Adapters(cli::daemon::AdaptersArgs),
    /// Show what the daemon is doing (over its socket, or from its state files).
    Status(cli::daemon::StatusArgs),
    /// Write shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completions(cli::shell::CompletionsArgs),
    /// Write man pages (scripts/man.sh puts them in docs/man/).
    #[command(hide = true)]
    Man(cli::shell::ManArgs),
}

/// `edge-sft inspect M | head`: when the reader goes away, end quietly as Unix tools do (exit
/// status 141, as if killed by SIGPIPE) instead of a panic from `println!`. Rust ignores
/// SIGPIPE, so the closed pipe shows up as that panic; every other panic is reported as usual.
fn quiet_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    // `tune --config FILE` fills in the flags the command line leaves out (cli/config_file.rs).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = match cli::config_file::parse(Cli::command(), argv.clone()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Tune(a), Some(m)) = (
        &mut cli.command,
        matches.subcommand_matches(cli::config_file::SUBCOMMAND),
    ) {
        let cmd = Cli::command();
        let tune = cmd.find_subcommand(cli::config_file::SUBCOMMAND);
        a.settings = tune.map(|t| cli::run_toml::RunSettings::from_matches(t, m, &argv));
    }
    let threads = match &cli.command {
        Command::Inspect(_) => None,
        Command::Eval(a) => a.threads,
        Command::Generate(a) => a.threads,
        Command::Chat(a) => a.threads,
        Command::Tune(a) => a.threads,
        Command::Export(_) | Command::Report(_) => None,
        Command::Merge(a) => a.threads,
        Command::Daemon(a) => {
            cli::daemon::apply_nice(a);
            a.thread_hint()
        }
        Command::Adapters(_) | Command::Status(_) => None,
        Command::Completions(_) | Command::Man(_) => None,
    };
    if let Err(e) = cli::init_threads(threads) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    // Run the whole command on a pool worker: kernels called from inside the pool fork and join
    // cheaply, where calls from outside would pay a wake-up hand-off on every product.
    let result = rayon::scope(|_| match cli.command {
        Command::Inspect(a) => cli::inspect::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Generate(a) => cli::generate::run(a),
        Command::Chat(a) => cli::chat::run(a),
        Command::Tune(a) => cli::tune::run(a),
        Command::Report(a) => cli::report::run(a),
        Command::Export(a) => cli::export::run(a),
        Command::Merge(a) => cli::merge::run(a),
        Command::Daemon(a) => cli::daemon::run(a),
        Command::Adapters(a) => cli::daemon::adapters(a),
        Command::Status(a) => cli::daemon::show_status(a),
        Command::Completions(a) => cli::shell::completions(a, Cli::command()),
        Command::Man(a) => cli::shell::man(a, Cli::command()),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
