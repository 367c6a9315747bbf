//! `edge-sft completions SHELL` and the hidden `edge-sft man --out DIR`: shell completions and
//! man pages generated from the clap definitions, so they never drift from the options.

use edge_sft::error::Error;
use edge_sft::Result;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
#[command(after_help = "Install, for example:\n  \
edge-sft completions bash > ~/.local/share/bash-completion/completions/edge-sft\n  \
edge-sft completions zsh > ~/.zfunc/_edge-sft   (with fpath+=~/.zfunc in ~/.zshrc)\n  \
edge-sft completions fish > ~/.config/fish/completions/edge-sft.fish")]
pub struct CompletionsArgs {
    /// The shell to write completions for (to stdout).
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(clap::Args)]
pub struct ManArgs {
    /// Folder for edge-sft.1 and one edge-sft-COMMAND.1 per subcommand.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn completions(a: CompletionsArgs, mut cmd: clap::Command) -> Result<()> {
    let name = cmd.get_name().to_string();
    clap_complete::generate(a.shell, &mut cmd, name, &mut std::io::stdout());
    Ok(())
}

/// Write the man pages, printing each file's path.
pub fn man(a: ManArgs, cmd: clap::Command) -> Result<()> {
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let cmd = cmd.disable_help_subcommand(true);
    write_page(&a.out, "edge-sft", cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("edge-sft-{}", sub.get_name());
        let page = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("edge-sft {}", sub.get_name()));
        write_page(&a.out, &name, page)?;
    }
    Ok(())
}

fn write_page(dir: &Path, name: &str, cmd: clap::Command) -> Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .map_err(|e| Error::io(&path, e))?;
    std::fs::write(&path, buf).map_err(|e| Error::io(&path, e))?;
    println!("{}", path.display());
    Ok(())
}
