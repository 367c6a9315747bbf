//! `edge-sft report`: redraw a run's loss figure, or overlay several runs, and print a summary.

use edge_sft::error::Error;
use edge_sft::report::{draw_run, table, write_svg, RunData};
use edge_sft::Result;
use std::path::PathBuf;

pub const LONG_ABOUT: &str = "Draw the loss figure of one tune run (RUN/loss.svg, the file tune \
itself writes at each checkpoint) or of several runs overlaid in one colour each (--out), and \
print a summary: steps, final smoothed training loss, held-out NLL of the base model and of the \
kept adapter, tokens/s.\n\n\
Examples:\n  edge-sft report runs/demo\n  edge-sft report runs/lr1e-3 runs/lr2e-4 --out compare.svg";

#[derive(clap::Args)]
pub struct Args {
    /// Run folders (tune --out): each holds metrics.jsonl.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where to write the figure. Default: RUN/loss.svg for one run; required for several.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the table only; draw nothing.
    #[arg(long)]
    pub no_figure: bool,
}

pub fn run(a: Args) -> Result<()> {
    let runs = a
        .runs
        .iter()
        .map(|d| RunData::load(d))
        .collect::<Result<Vec<_>>>()?;
    let rows: Vec<_> = runs.iter().map(|r| r.summary()).collect();
    print!("{}", table(&rows));
    if a.no_figure {
        return Ok(());
    }
    let written = match (&a.out, runs.len()) {
        (None, 1) => draw_run(&a.runs[0])?,
        (None, _) => {
            return Err(Error::Usage(
                "several runs are drawn into one figure: give --out FILE.svg".into(),
            ))
        }
        (Some(out), _) => {
            let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
            let title = match names.as_slice() {
                [one] => format!("edge-sft tune: {one}"),
                many => format!("edge-sft tune: {}", many.join(" vs ")),
            };
            write_svg(&runs, &title, out)?;
            out.clone()
        }
    };
    println!("figure: {}", written.display());
    Ok(())
}
