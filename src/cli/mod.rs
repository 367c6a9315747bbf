//! One file per subcommand. Each parses its arguments with clap and calls the library.

pub mod chat;
pub mod common;
pub mod config_file;
pub mod daemon;
pub mod eval;
pub mod export;
pub mod generate;
pub mod inspect;
pub mod merge;
pub mod report;
pub mod run_toml;
pub mod shell;
pub mod tune;
mod tune_progress;

use edge_sft::Result;

/// Set the rayon thread count: `--threads N`, default the number of physical cores.
pub fn init_threads(threads: Option<usize>) -> Result<usize> {
    let n = threads.unwrap_or_else(num_cpus::get_physical).max(1);
    // A second call (tests, daemon) keeps the first pool; that is fine.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    Ok(rayon::current_num_threads())
}
