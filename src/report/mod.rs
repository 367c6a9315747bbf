//! Seeing a run: the loss figure `tune` writes into its folder and `report` redraws or
//! overlays, and the summary table `report` prints.

pub mod plot;
pub mod run;

pub use plot::{render_svg, write_svg};
pub use run::{table, RunData, Summary};

use crate::error::Result;
use std::path::{Path, PathBuf};

/// The figure's file in a run folder.
pub const FIGURE: &str = "loss.svg";

/// Redraw `dir/loss.svg` from the folder's metrics; returns its path.
pub fn draw_run(dir: &Path) -> Result<PathBuf> {
    let run = RunData::load(dir)?;
    let out = dir.join(FIGURE);
    let title = format!("edge-sft tune: {}", run.name);
    write_svg(std::slice::from_ref(&run), &title, &out)?;
    Ok(out)
}
