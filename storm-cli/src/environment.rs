//! Settings from the environment: every option of every `storm` command
//! that takes one value can come from `STORM_<LONG_NAME>` (the long name in
//! upper case, `-` as `_`: `--max-connections` is `STORM_MAX_CONNECTIONS`),
//! and the command line wins over it.
//!
//! The rule, in one place ([`with_env`]) rather than on each option:
//!
//! - An option with a long name and one value gets its variable; a flag
//!   (`--no-deflate`) reads `true`/`false` (also `1`/`0`, `yes`/`no`,
//!   `on`/`off`).
//! - Options that take several values (`--tls CERT_PEM KEY_PEM`) or repeat
//!   (`--header`, `--endpoint`, `--name`, `--allow-origin`,
//!   `--subprotocol`) stay command-line only: a variable holds one value,
//!   and no separator is safe in paths, URLs and header values.
//! - Positional arguments, `--help` and `--version` have none.
//! - One long name is one variable: `STORM_ADDR` is `--addr` of whichever
//!   command runs (`storm echo`'s listening address, `storm bench`'s
//!   target).
//! - An option on the command line wins over its variable, and over a
//!   variable whose option conflicts with it (`STORM_NO_HTTP=true` and
//!   `storm chat --http-addr …` serve the page).
//! - A bad value exits with code 2 and clap's message, with a tip naming
//!   the variable it came from.
//!
//! Values are read once, at start.

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, Command, CommandFactory, FromArgMatches};

/// What every option's variable starts with.
const PREFIX: &str = "STORM_";

/// The variable of the option with this long name: `max-connections` →
/// `STORM_MAX_CONNECTIONS`.
pub(crate) fn variable(long: &str) -> String {
    format!("{PREFIX}{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// `P` from the process's command line and environment; on a bad command
/// line or value, clap's message (naming the variables the values came
/// from) and its exit code (2; 0 for `--help` and `--version`).
pub(crate) fn parse<P: CommandFactory + FromArgMatches>() -> P {
    parse_from(std::env::args_os().collect()).unwrap_or_else(|e| e.exit())
}

/// [`parse`] of `argv` (the program's name first).
///
/// # Errors
///
/// clap's error for a bad command line or value.
pub(crate) fn parse_from<P: CommandFactory + FromArgMatches>(
    argv: Vec<OsString>,
) -> Result<P, clap::Error> {
    // The options whose variable is dropped because an option on the
    // command line conflicts with it; each round drops at least one more,
    // so this ends.
    let mut overridden: Vec<String> = Vec::new();
    loop {
        let mut command = with_env(P::command(), &overridden);
        match command.try_get_matches_from_mut(&argv) {
            Ok(mut matches) => {
                return P::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut command));
            }
            Err(e) => {
                let named = options_named(&e);
                let from_env: Vec<String> = named
                    .iter()
                    .filter(|long| from_environment(&command, long, &argv))
                    .cloned()
                    .collect();
                let from_cli = named.iter().any(|long| on_command_line(long, &argv));
                if e.kind() == ErrorKind::ArgumentConflict
                    && from_cli
                    && !from_env.is_empty()
                    && from_env.iter().any(|long| !overridden.contains(long))
                {
                    overridden.extend(from_env);
                    continue;
                }
                return Err(with_tips(e, &command, &from_env));
            }
        }
    }
}

/// `command` with every option given its variable as the module's rule
/// says, subcommands included, except the options in `overridden`.
/// Variables shown in `--help` as `[env: STORM_…]`, without their values.
pub(crate) fn with_env(command: Command, overridden: &[String]) -> Command {
    command
        .mut_args(|arg| with_variable(arg, overridden))
        .mut_subcommands(|sub| with_env(sub, overridden))
}

/// `arg` with its variable, if the rule gives it one.
fn with_variable(arg: Arg, overridden: &[String]) -> Arg {
    let Some(long) = arg.get_long().map(str::to_owned) else {
        return arg; // a positional argument
    };
    if overridden.contains(&long) {
        return arg.env(None);
    }
    let several = arg.get_num_args().is_some_and(|n| n.max_values() > 1);
    let arg = match arg.get_action() {
        ArgAction::Set if !several => arg,
        // A flag: `STORM_NO_DEFLATE=1` as well as `true`.
        ArgAction::SetTrue | ArgAction::SetFalse => {
            arg.value_parser(clap::builder::BoolishValueParser::new())
        }
        _ => return arg, // repeated, several values, --help, --version, counts
    };
    // An explicit variable (`storm bench --runtime`'s STORM_RUNTIME) stays.
    let arg = if arg.get_env().is_some() {
        arg
    } else {
        arg.env(variable(&long))
    };
    arg.hide_env_values(true)
}

/// The long names of the options a parse error names (the one refused,
/// the ones it conflicts with, the ones missing).
fn options_named(error: &clap::Error) -> Vec<String> {
    let mut shown = Vec::new();
    for kind in [ContextKind::InvalidArg, ContextKind::PriorArg] {
        match error.get(kind) {
            Some(ContextValue::String(one)) => shown.push(one.clone()),
            Some(ContextValue::Strings(many)) => shown.extend(many.iter().cloned()),
            _ => {}
        }
    }
    // As clap shows them: `--max-connections <N>`.
    shown
        .iter()
        .filter_map(|s| s.strip_prefix("--"))
        .map(|s| s.split([' ', '=']).next().unwrap_or(s).to_owned())
        .collect()
}

/// Whether `--LONG` (or `--LONG=…`) is in `argv`.
fn on_command_line(long: &str, argv: &[OsString]) -> bool {
    let flag = format!("--{long}");
    argv.iter().filter_map(|a| a.to_str()).any(|a| {
        a.strip_prefix(flag.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
    })
}

/// Whether the option `--LONG` took its value from its variable: it has
/// one in `command` (or a subcommand), the variable is set, and the
/// option is not on the command line.
fn from_environment(command: &Command, long: &str, argv: &[OsString]) -> bool {
    !on_command_line(long, argv)
        && variable_in(command, long).is_some_and(|name| std::env::var_os(name).is_some())
}

/// The variable of `--LONG` in `command` or its subcommands.
fn variable_in(command: &Command, long: &str) -> Option<OsString> {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .and_then(Arg::get_env)
        .map(ToOwned::to_owned)
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|sub| variable_in(sub, long))
        })
}

/// `error` with a tip for each option in `from_env`: the variable (and
/// value) it came from.
fn with_tips(mut error: clap::Error, command: &Command, from_env: &[String]) -> clap::Error {
    let mut tips = match error.get(ContextKind::Suggested) {
        Some(ContextValue::StyledStrs(tips)) => tips.clone(),
        _ => Vec::new(),
    };
    for long in from_env {
        let Some(name) = variable_in(command, long) else {
            continue;
        };
        let value = std::env::var_os(&name).unwrap_or_default();
        tips.push(
            format!(
                "--{long} came from the environment: {}={}",
                name.to_string_lossy(),
                value.to_string_lossy()
            )
            .into(),
        );
    }
    if !tips.is_empty() {
        error.insert(ContextKind::Suggested, ContextValue::StyledStrs(tips));
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_name_maps_to_one_upper_case_variable() {
        assert_eq!(variable("addr"), "STORM_ADDR");
        assert_eq!(variable("max-connections"), "STORM_MAX_CONNECTIONS");
        assert_eq!(variable("tls-ca"), "STORM_TLS_CA");
    }

    /// A command with one option of each kind the rule sorts.
    fn sample() -> Command {
        Command::new("t")
            .arg(Arg::new("file"))
            .arg(Arg::new("addr").long("addr"))
            .arg(Arg::new("quiet").long("quiet").action(ArgAction::SetTrue))
            .arg(Arg::new("header").long("header").action(ArgAction::Append))
            .arg(Arg::new("tls").long("tls").num_args(2))
            .arg(Arg::new("runtime").long("runtime").env("OWN_NAME"))
            .subcommand(Command::new("sub").arg(Arg::new("tls-ca").long("tls-ca")))
    }

    fn env_of(command: &Command, id: &str) -> Option<String> {
        command
            .get_arguments()
            .find(|arg| arg.get_id() == id)
            .and_then(Arg::get_env)
            .map(|name| name.to_string_lossy().into_owned())
    }

    #[test]
    fn options_with_one_value_get_their_variable_and_others_none() {
        let command = with_env(sample(), &[]);
        assert_eq!(env_of(&command, "file"), None);
        assert_eq!(env_of(&command, "addr").as_deref(), Some("STORM_ADDR"));
        assert_eq!(env_of(&command, "quiet").as_deref(), Some("STORM_QUIET"));
        assert_eq!(env_of(&command, "header"), None);
        assert_eq!(env_of(&command, "tls"), None);
        assert_eq!(env_of(&command, "runtime").as_deref(), Some("OWN_NAME"));
        let sub = command.find_subcommand("sub").expect("sub");
        assert_eq!(env_of(sub, "tls-ca").as_deref(), Some("STORM_TLS_CA"));
    }

    #[test]
    fn an_overridden_option_has_no_variable() {
        let command = with_env(sample(), &["addr".to_owned(), "runtime".to_owned()]);
        assert_eq!(env_of(&command, "addr"), None);
        assert_eq!(env_of(&command, "runtime"), None);
        assert_eq!(env_of(&command, "quiet").as_deref(), Some("STORM_QUIET"));
    }

    #[test]
    fn only_the_option_itself_or_its_value_counts_as_on_the_command_line() {
        let argv: Vec<OsString> = ["storm", "--addr=x", "--no-http", "--tls-ca-more"]
            .map(OsString::from)
            .to_vec();
        assert!(on_command_line("addr", &argv));
        assert!(on_command_line("no-http", &argv));
        assert!(!on_command_line("tls-ca", &argv));
        assert!(!on_command_line("http", &argv));
    }

    #[test]
    fn the_options_an_error_names_are_their_long_names() {
        let error = with_env(
            Command::new("t")
                .arg(Arg::new("a").long("a-b").conflicts_with("c"))
                .arg(Arg::new("c").long("c").action(ArgAction::SetTrue)),
            &[],
        )
        .try_get_matches_from(["t", "--a-b", "1", "--c"])
        .expect_err("a conflict");
        let mut named = options_named(&error);
        named.sort();
        assert_eq!(named, ["a-b", "c"]);
    }
}
