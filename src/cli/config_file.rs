//! `--config FILE` on every command: flag values from a TOML, YAML or JSON file, under the
//! flags' own names (`max-new-tokens` or `max_new_tokens`). The file's values become flags
//! placed before the command line's, so a flag given on the command line wins (a list flag
//! such as `stop` takes both). An unknown key is an error naming the key and the file.

use anyhow::{bail, Context, Result};
use clap::{ArgAction, Command};
use serde_json::Value;
use std::ffi::OsString;
use std::path::Path;

/// The command line with the values of its `--config` file (if any) in it.
pub fn expand(args: Vec<OsString>, cli: &Command) -> Result<Vec<OsString>> {
    let Some(path) = config_path(&args)? else {
        return Ok(args);
    };
    let values = read(Path::new(&path))?;
    let sub_at = subcommand_at(&args, cli);
    let sub = sub_at.and_then(|i| {
        let name = args[i].to_str()?;
        cli.get_subcommands().find(|c| c.get_name() == name)
    });
    let (mut global, mut local) = (vec![], vec![]);
    for (key, value) in &values {
        let flag = key.replace('_', "-");
        if flag == "config" {
            bail!("{path}: `config` cannot name another file");
        }
        let local_arg = sub.and_then(|s| Some((find(s, &flag)?, s)));
        let (arg, owner, out) = match (local_arg, find(cli, &flag)) {
            (Some((arg, s)), _) => (arg, s, &mut local),
            (None, Some(arg)) => (arg, cli, &mut global),
            (None, None) => bail!(
                "{path}: unknown key `{key}` (not a flag of `tpo-engine{}`)",
                sub.map_or(String::new(), |s| format!(" {}", s.get_name()))
            ),
        };
        flag_args(out, owner, arg, &flag, value).with_context(|| format!("{path}: key `{key}`"))?;
    }
    // Global flags go first of all; the command's right after its name.
    let mut out = vec![args[0].clone()];
    out.extend(global);
    match sub_at {
        Some(i) => {
            out.extend_from_slice(&args[1..=i]);
            out.extend(local);
            out.extend_from_slice(&args[i + 1..]);
        }
        None => {
            if !local.is_empty() {
                bail!("{path}: flags of a command, and the command line names none");
            }
            out.extend_from_slice(&args[1..]);
        }
    }
    Ok(out)
}

/// The file `--config` names; a second `--config` is an error.
fn config_path(args: &[OsString]) -> Result<Option<String>> {
    let mut found = None;
    for (i, a) in args.iter().enumerate().skip(1) {
        let a = a.to_string_lossy();
        let path = if a == "--config" {
            match args.get(i + 1) {
                Some(p) => p.to_string_lossy().into_owned(),
                None => bail!("--config needs a file"),
            }
        } else if let Some(p) = a.strip_prefix("--config=") {
            p.to_string()
        } else {
            continue;
        };
        if found.is_some() {
            bail!("--config is given twice");
        }
        found = Some(path);
    }
    Ok(found)
}

/// The position of the subcommand's name: the first argument that is not a global flag or
/// its value.
fn subcommand_at(args: &[OsString], cli: &Command) -> Option<usize> {
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if let Some(name) = a.strip_prefix("--") {
            let takes_value = !name.contains('=')
                && (name == "config"
                    || find(cli, name).is_some_and(|arg| arg.get_action().takes_values()));
            i += if takes_value { 2 } else { 1 };
            continue;
        }
        return cli
            .get_subcommands()
            .any(|c| c.get_name() == a)
            .then_some(i);
    }
    None
}

fn find<'c>(cmd: &'c Command, long: &str) -> Option<&'c clap::Arg> {
    cmd.get_arguments().find(|a| a.get_long() == Some(long))
}

/// The flags that give `arg` the file's `value`.
fn flag_args(
    out: &mut Vec<OsString>,
    owner: &Command,
    arg: &clap::Arg,
    flag: &str,
    value: &Value,
) -> Result<()> {
    let dashed = |f: &str| OsString::from(format!("--{f}"));
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => match value {
            Value::Bool(true) => out.push(dashed(flag)),
            // Off: its `no-` twin where it has one (an option that is on by default).
            Value::Bool(false) => {
                let no = format!("no-{flag}");
                if find(owner, &no).is_some() {
                    out.push(dashed(&no));
                }
            }
            other => bail!("expected true or false, found {other}"),
        },
        ArgAction::Append => {
            let items = match value {
                Value::Array(items) => items.clone(),
                other => vec![other.clone()],
            };
            for item in &items {
                out.push(dashed(flag));
                out.push(scalar(item)?.into());
            }
        }
        _ => {
            out.push(dashed(flag));
            out.push(scalar(value)?.into());
        }
    }
    Ok(())
}

fn scalar(value: &Value) -> Result<String> {
    Ok(match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => bail!("expected a single value, found {other}"),
    })
}

/// The file's keys and values, by its extension.
fn read(path: &Path) -> Result<serde_json::Map<String, Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config {}: cannot read it", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let value: Value = match ext {
        "toml" => serde_json::to_value(
            toml::from_str::<toml::Table>(&text)
                .with_context(|| format!("{}: not valid TOML", path.display()))?,
        )?,
        "yaml" | "yml" => serde_yaml_ng::from_str(&text)
            .with_context(|| format!("{}: not valid YAML", path.display()))?,
        "json" => serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?,
        _ => bail!(
            "--config {}: expected a .toml, .yaml, .yml or .json file",
            path.display()
        ),
    };
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Default::default()),
        other => bail!(
            "{}: expected keys and values (flag names), found {other}",
            path.display()
        ),
    }
}
