//! `tune --config FILE.toml`: every key is a `tune` flag's long name (`lr = 5e-4`,
//! `batch-size = 1`, `targets = ["q", "v"]`, `grad-checkpoint = true`), and the command line wins
//! over the file.
//!
//! The command line is parsed first with every flag optional, which tells (clap's
//! `ValueSource::CommandLine`) which flags the user typed; each key of the file whose flag was not
//! typed becomes one `--flag=value` token appended to the command line, and the whole is parsed
//! again as usual. The two sets are disjoint, so a list (`--targets`) is taken whole from one side
//! and a single-valued flag is never given twice. Relative paths in the file are relative to the
//! file's folder. Every key is checked against the flag's own parser before anything runs: an
//! unknown key, a value of the wrong type or out of range is an error naming the file, the line
//! and the key.

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use edge_sft::error::{Error, Result};
use std::any::TypeId;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The subcommand that takes `--config`.
pub const SUBCOMMAND: &str = "tune";
/// The flag (and arg id) that names the file.
pub const CONFIG: &str = "config";

/// What a flag's value is, as a config file spells it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// `--grad-checkpoint`: `true` or `false`.
    Flag,
    /// A `ValueEnum` (`--schedule cosine`): a string from a fixed list.
    Choice,
    Int,
    Float,
    Path,
    Text,
}

impl Kind {
    pub fn of(arg: &Arg) -> Kind {
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            return Kind::Flag;
        }
        if !arg.get_possible_values().is_empty() {
            return Kind::Choice;
        }
        let t = arg.get_value_parser().type_id();
        let is = |ids: &[TypeId]| ids.iter().any(|id| t == *id);
        if is(&[
            TypeId::of::<usize>(),
            TypeId::of::<u64>(),
            TypeId::of::<u32>(),
            TypeId::of::<u16>(),
            TypeId::of::<u8>(),
            TypeId::of::<isize>(),
            TypeId::of::<i64>(),
            TypeId::of::<i32>(),
        ]) {
            Kind::Int
        } else if is(&[TypeId::of::<f32>(), TypeId::of::<f64>()]) {
            Kind::Float
        } else if is(&[TypeId::of::<PathBuf>()]) {
            Kind::Path
        } else {
            Kind::Text
        }
    }

    fn describe(self, arg: &Arg) -> String {
        match self {
            Kind::Flag => "true or false".into(),
            Kind::Choice => {
                let names: Vec<String> = arg
                    .get_possible_values()
                    .iter()
                    .map(|p| format!("\"{}\"", p.get_name()))
                    .collect();
                format!("one of {}", names.join(", "))
            }
            Kind::Int => "a whole number".into(),
            Kind::Float => "a number".into(),
            Kind::Path => "a path (a string)".into(),
            Kind::Text => "a string".into(),
        }
    }
}

/// A flag that takes a list (`--targets`): a config file may give an array.
pub fn is_list(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// The flags a config file may set: every long flag of `tune` but `--config` and the help.
fn file_flags(tune: &Command) -> Vec<&Arg> {
    tune.get_arguments()
        .filter(|a| a.get_long().is_some())
        .filter(|a| !matches!(a.get_id().as_str(), CONFIG | "help" | "version"))
        .collect()
}

/// `tune` with every flag optional: what the command line says before the file fills it in.
fn relaxed(tune: &Command) -> Command {
    let ids: Vec<_> = tune.get_arguments().map(|a| a.get_id().clone()).collect();
    ids.into_iter()
        .fold(tune.clone(), |c, id| c.mut_arg(id, |a| a.required(false)))
}

/// Parse `argv` against `cmd` (the whole program). For `tune --config FILE`, the keys of FILE
/// whose flags are not on the command line are added to it. Help, version and command-line
/// usage errors print and exit as clap does; errors in FILE are returned.
pub fn parse(cmd: Command, argv: Vec<OsString>) -> Result<ArgMatches> {
    let lenient = cmd
        .clone()
        .mut_subcommand(SUBCOMMAND, |t| relaxed(&t))
        .try_get_matches_from(&argv);
    let config = match &lenient {
        Ok(m) => m
            .subcommand_matches(SUBCOMMAND)
            .and_then(|t| t.get_one::<PathBuf>(CONFIG).cloned()),
        Err(_) => None,
    };
    let (Some(path), Ok(lenient)) = (config, lenient) else {
        return Ok(cmd.get_matches_from(argv));
    };
    let typed = lenient
        .subcommand_matches(SUBCOMMAND)
        .expect("the config flag belongs to this subcommand");
    let tune = cmd
        .find_subcommand(SUBCOMMAND)
        .expect("the program has a tune subcommand");
    let added = file_tokens(tune, &path, |id| {
        typed.value_source(id) == Some(ValueSource::CommandLine)
    })?;
    let mut full = argv;
    full.extend(added);
    Ok(cmd.get_matches_from(full))
}

/// The `--flag=value` tokens that `path` adds to a command line on which `on_command_line(id)`
/// tells the flags already given.
pub fn file_tokens(
    tune: &Command,
    path: &Path,
    on_command_line: impl Fn(&str) -> bool,
) -> Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new(""));
    let keys = read_keys(path, &text)?;
    let flags = file_flags(tune);
    let check = relaxed(tune).no_binary_name(true);
    let mut out = Vec::new();
    for (key, line, value) in keys {
        let at = |msg: String| Error::Usage(format!("{}:{line}: {msg}", path.display()));
        let Some(arg) = flags.iter().find(|a| a.get_long() == Some(key.as_str())) else {
            return Err(at(unknown_key(&key, &flags)));
        };
        let tokens = tokens_for(arg, &value, base).map_err(|expected| {
            at(format!(
                "{key} = {}: expected {expected}",
                short(&value.to_string())
            ))
        })?;
        // The flag's own parser checks the value (ranges, choices, numbers) now, so that the
        // error names the file rather than a flag the user never typed.
        if let Err(e) = check.clone().try_get_matches_from(&tokens) {
            let reason = e.to_string();
            let reason = reason
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            return Err(at(format!(
                "{key} = {}: {reason} (expected {})",
                short(&value.to_string()),
                Kind::of(arg).describe(arg)
            )));
        }
        if !on_command_line(arg.get_id().as_str()) {
            out.extend(tokens);
        }
    }
    Ok(out)
}

/// The file's keys in order, each with its 1-based line and value.
fn read_keys(path: &Path, text: &str) -> Result<Vec<(String, usize, toml::Value)>> {
    use std::collections::BTreeMap;
    use toml::Spanned;
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| Error::format(path, format!("{e}")))?;
    let line = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
    let mut keys: Vec<_> = table
        .into_iter()
        .map(|(k, v)| (k.span().start, k.into_inner(), v.into_inner()))
        .collect();
    keys.sort_by_key(|k| k.0);
    Ok(keys
        .into_iter()
        .map(|(at, k, v)| (k, line(at), v))
        .collect())
}

/// `value` as `--flag=...` tokens for `arg`, or what was expected instead.
fn tokens_for(
    arg: &Arg,
    value: &toml::Value,
    base: &Path,
) -> std::result::Result<Vec<OsString>, String> {
    let kind = Kind::of(arg);
    let long = arg.get_long().unwrap_or_default();
    if kind == Kind::Flag {
        return match value {
            toml::Value::Boolean(true) => Ok(vec![format!("--{long}").into()]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            _ => Err(kind.describe(arg)),
        };
    }
    let one = |v: &toml::Value| -> Option<OsString> {
        let text = scalar(kind, v)?;
        let mut t = OsString::from(format!("--{long}="));
        if kind == Kind::Path && Path::new(&text).is_relative() {
            t.push(base.join(text).as_os_str());
        } else {
            t.push(text);
        }
        Some(t)
    };
    let expected = || {
        let one = kind.describe(arg);
        if is_list(arg) {
            format!("{one}, or an array of them")
        } else {
            one
        }
    };
    match value {
        toml::Value::Array(items) if is_list(arg) => {
            items.iter().map(|v| one(v).ok_or_else(expected)).collect()
        }
        v => one(v).map(|t| vec![t]).ok_or_else(expected),
    }
}

/// The command-line text of one value, when the kind takes it. Numbers may also be strings,
/// passed on as typed (run.toml writes one so when a TOML number would not read back exactly).
fn scalar(kind: Kind, v: &toml::Value) -> Option<String> {
    match (kind, v) {
        (_, toml::Value::String(s)) => Some(s.clone()),
        (Kind::Int | Kind::Float, toml::Value::Integer(i)) => Some(i.to_string()),
        // `{:?}` keeps a decimal point ("8.0"), so a float given for a whole number is refused.
        (Kind::Float | Kind::Int, toml::Value::Float(f)) => Some(format!("{f:?}")),
        _ => None,
    }
}

/// The command-line text a TOML number literal `lit` stands for (as [`file_tokens`] reads it).
pub fn number_token(lit: &str) -> Option<String> {
    let t: toml::Table = toml::from_str(&format!("v = {lit}")).ok()?;
    scalar(Kind::Float, t.get("v")?)
}

fn short(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn unknown_key(key: &str, flags: &[&Arg]) -> String {
    let mut msg = format!("unknown key '{key}': tune has no --{key} flag");
    if key == CONFIG {
        return format!("{msg} in a config file (config files do not nest)");
    }
    let want = key.trim_start_matches('-').replace('_', "-");
    let best = flags
        .iter()
        .filter_map(|a| a.get_long())
        .map(|l| (edit_distance(&want, l), l))
        .min();
    if let Some((d, l)) = best {
        if d <= 2.max(want.len() / 3) {
            msg.push_str(&format!("; did you mean '{l}'?"));
        }
    }
    msg.push_str(" (keys are the long flag names, as in `batch-size = 1`)");
    msg
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct T {
        #[command(flatten)]
        a: crate::cli::tune::Args,
    }

    fn tune() -> Command {
        T::command()
    }

    fn tokens(text: &str, typed: &[&str]) -> Result<Vec<String>> {
        let dir = std::env::temp_dir().join(format!("edge-sft-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = dir.join(format!("{n}.toml"));
        std::fs::write(&p, text).unwrap();
        let r = file_tokens(&tune(), &p, |id| typed.contains(&id));
        let _ = std::fs::remove_file(&p);
        r.map(|v| v.into_iter().map(|t| t.into_string().unwrap()).collect())
    }

    #[test]
    fn keys_become_tokens_and_typed_flags_are_left_out() {
        let t = tokens(
            "lr = 5e-4\nbatch-size = 2\ntargets = [\"q\", \"v\"]\ngrad-checkpoint = true\n\
             skip-bad = false\nschedule = \"linear\"\nseed = 7\n",
            &["seed"],
        )
        .unwrap();
        assert_eq!(
            t,
            [
                "--lr=0.0005",
                "--batch-size=2",
                "--targets=q",
                "--targets=v",
                "--grad-checkpoint",
                "--schedule=linear"
            ]
        );
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let t = tokens("data = \"d/train.jsonl\"\nmodel = \"/abs/m.gguf\"\n", &[]).unwrap();
        let dir = std::env::temp_dir().join(format!("edge-sft-cfg-{}", std::process::id()));
        assert_eq!(
            t[0],
            format!("--data={}", dir.join("d/train.jsonl").display())
        );
        assert_eq!(t[1], "--model=/abs/m.gguf");
    }

    #[test]
    fn bad_keys_and_values_name_the_line_and_key() {
        let e = tokens("lr = 1e-3\nbatch_size = 2\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2: unknown key 'batch_size'"), "{e}");
        assert!(e.contains("did you mean 'batch-size'"), "{e}");
        let e = tokens("\n\nrank = \"eight\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains(":3: rank = \"eight\""), "{e}");
        assert!(e.contains("expected a whole number"), "{e}");
        let e = tokens("rank = 8.0\n", &[]).unwrap_err().to_string();
        assert!(e.contains("rank = 8.0"), "{e}");
        let e = tokens("grad-checkpoint = 1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected true or false"), "{e}");
        let e = tokens("schedule = \"cosin\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("one of \"cosine\", \"linear\", \"constant\""),
            "{e}"
        );
        let e = tokens("targets = [1]\n", &[]).unwrap_err().to_string();
        assert!(e.contains("or an array of them"), "{e}");
        let e = tokens("config = \"x.toml\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("do not nest"), "{e}");
        let e = tokens("lr = \n", &[]).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn number_tokens_keep_their_value() {
        assert_eq!(number_token("5e-4").as_deref(), Some("0.0005"));
        assert_eq!(number_token("16").as_deref(), Some("16"));
        assert_eq!(number_token("0.05").as_deref(), Some("0.05"));
        assert_eq!(number_token(".5"), None);
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("rank", "rank"), 0);
        assert_eq!(edit_distance("lr", "l"), 1);
        assert_eq!(edit_distance("epcohs", "epochs"), 2);
    }
}
