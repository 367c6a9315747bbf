//! `OUT/run.toml`: every effective setting of a `tune` run (defaults included, paths absolute,
//! the thread count resolved) as a config file, so that `edge-sft tune --config OUT/run.toml
//! --out NEW` repeats the run and writes the same adapter bytes. Written atomically as the run
//! starts, so a killed run has one too.

use super::config_file::{is_list, number_token, Kind, CONFIG};
use clap::{Arg, ArgMatches, Command};
use edge_sft::error::Result;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// The file's name in the run folder.
pub const FILE: &str = "run.toml";

/// Flags a repeat must not inherit: they say what to do with the folder, not how to train.
const NOT_RECORDED: [&str; 3] = [CONFIG, "resume", "force"];

/// The settings of one run, in the order `tune --help` lists them.
#[derive(Clone, Debug, Default)]
pub struct RunSettings {
    /// Long flag name and its value as TOML (`None`: not set, the flag's own rule applies).
    entries: Vec<(String, Option<String>)>,
    command_line: String,
    config: Option<PathBuf>,
}

impl RunSettings {
    /// The settings `m` (the final matches of `tune`, command line and config file together)
    /// holds for the flags of `tune`; `argv` is the command line as typed.
    pub fn from_matches(tune: &Command, m: &ArgMatches, argv: &[OsString]) -> RunSettings {
        let entries = tune
            .get_arguments()
            .filter(|a| a.get_long().is_some())
            .filter(|a| {
                let id = a.get_id().as_str();
                !NOT_RECORDED.contains(&id) && id != "help" && id != "version"
            })
            .map(|a| {
                (
                    a.get_long().unwrap_or_default().to_string(),
                    value_text(a, m),
                )
            })
            .collect();
        RunSettings {
            entries,
            command_line: command_line(argv),
            config: m.get_one::<PathBuf>(CONFIG).map(|p| absolute(p)),
        }
    }

    fn set(&mut self, key: &str, value: String) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = Some(value),
            None => self.entries.push((key.to_string(), Some(value))),
        }
    }

    /// Record a value the run resolved itself (the thread count).
    pub fn set_int(&mut self, key: &str, v: u64) {
        self.set(key, v.to_string());
    }

    /// Record a path the run resolved itself (the output folder of `--resume DIR`).
    pub fn set_path(&mut self, key: &str, p: &Path) {
        self.set(key, quote(&absolute(p).to_string_lossy()));
    }

    /// The text of `file`. `resumed`: the run continues a checkpoint.
    pub fn to_toml(&self, file: &Path, resumed: bool) -> String {
        let mut s = format!(
            "# edge-sft {}: the effective settings of the tune run in this folder.\n\
             # Repeat it (same seed and thread count, the same adapter bytes) with\n\
             #   edge-sft tune --config {} --out NEW_FOLDER\n\
             # Flags on the command line win over the keys here. Relative paths are relative to\n\
             # this file's folder. Not recorded: --force and --resume (what to do with a folder),\n\
             # --config.\n\
             # Command line: {}\n",
            env!("CARGO_PKG_VERSION"),
            shell_word(absolute(file).as_os_str()),
            self.command_line
        );
        if let Some(c) = &self.config {
            s.push_str(&format!(
                "# Config file: {}\n",
                one_line(&c.to_string_lossy())
            ));
        }
        if resumed {
            s.push_str(
                "# Continued from a checkpoint (--resume): a fresh run from this file matches it\n\
                 # when the resume kept the run's length (--steps, --epochs).\n",
            );
        }
        s.push('\n');
        for (k, v) in &self.entries {
            match v {
                Some(v) => s.push_str(&format!("{k} = {v}\n")),
                None => s.push_str(&format!("# {k}: not set\n")),
            }
        }
        s
    }

    /// Write `out/run.toml` atomically.
    pub fn write(&self, out: &Path, resumed: bool) -> Result<()> {
        use std::io::Write;
        let path = out.join(FILE);
        let text = self.to_toml(&path, resumed);
        edge_sft::format::gguf_write::write_atomic(&path, |w| w.write_all(text.as_bytes()))
    }
}

/// `arg`'s value in `m` as TOML text, or `None` when it has none.
fn value_text(arg: &Arg, m: &ArgMatches) -> Option<String> {
    let raw: Vec<&OsStr> = m.get_raw(arg.get_id().as_str())?.collect();
    let kind = Kind::of(arg);
    let one = |r: &&OsStr| {
        let s = r.to_string_lossy();
        match kind {
            Kind::Flag if s == "true" || s == "false" => s.to_string(),
            Kind::Int if s.parse::<i64>().is_ok_and(|i| i.to_string() == s) => s.to_string(),
            // Written as the file reader will pass it on (`1e-3` as 0.001), so that a repeat's
            // run.toml reads the same as its original's.
            Kind::Float => match number_token(&s) {
                Some(t) if same_number(&t, &s) => t,
                _ => quote(&s),
            },
            Kind::Path => quote(&absolute(Path::new(r)).to_string_lossy()),
            _ => quote(&s),
        }
    };
    if is_list(arg) {
        Some(format!(
            "[{}]",
            raw.iter().map(one).collect::<Vec<_>>().join(", ")
        ))
    } else {
        raw.last().map(one)
    }
}

/// `a` and `b` are the same number in both float widths: a TOML literal `b` that reads back as
/// the text `a` gives the flag exactly the value the command line gave it.
fn same_number(a: &str, b: &str) -> bool {
    let (Ok(a64), Ok(b64)) = (a.parse::<f64>(), b.parse::<f64>()) else {
        return false;
    };
    let (Ok(a32), Ok(b32)) = (a.parse::<f32>(), b.parse::<f32>()) else {
        return false;
    };
    a64.to_bits() == b64.to_bits() && a32.to_bits() == b32.to_bits()
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// `argv` as one shell line, the program named `edge-sft`.
fn command_line(argv: &[OsString]) -> String {
    let mut words: Vec<String> = argv.iter().skip(1).map(|w| shell_word(w)).collect();
    words.insert(0, "edge-sft".into());
    words.join(" ")
}

/// `w` quoted where a shell would need it, on one line.
fn shell_word(w: &OsStr) -> String {
    let w = w.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=,:@+%".contains(c);
    if !w.is_empty() && w.chars().all(plain) {
        w.to_string()
    } else {
        one_line(&format!("'{}'", w.replace('\'', "'\\''")))
    }
}

/// `s` with its control characters escaped, so it stays on its comment line.
fn one_line(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_literals_only_when_they_read_back_exactly() {
        assert!(same_number("0.0005", "5e-4"));
        assert!(same_number("16", "16"));
        assert!(!same_number("0.1", "0.10000000000000000001x"));
        // Just under the f32 midpoint 1 + 2⁻²⁴: f32 rounds it down, but its f64 is the midpoint,
        // whose shortest text lies above it and rounds up. Such a value is written as a string.
        let s = "1.00000005960464477539062499999";
        assert!(!same_number(&number_token(s).unwrap(), s));
    }

    #[test]
    fn command_line_quotes_what_a_shell_would_split() {
        let argv: Vec<OsString> = [
            "x",
            "tune",
            "--data",
            "my data.jsonl",
            "--lr",
            "5e-4",
            "it's",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(
            command_line(&argv),
            "edge-sft tune --data 'my data.jsonl' --lr 5e-4 'it'\\''s'"
        );
        assert_eq!(one_line("a\nb"), "a\\nb");
    }
}
