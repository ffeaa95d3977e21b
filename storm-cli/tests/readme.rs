//! README.md's synopsis of every `storm` command matches the binary's
//! `--help` (issue 19): `--help` is the truth, the README the front door.
//!
//! What is checked, for every command and client subcommand the binary
//! lists (`storm --help`, `storm client --help`, recursively):
//! - README has a synopsis of it: a line `storm COMMAND …` in a ```text
//!   block whose first line starts with `storm ` and which writes optional
//!   parts in brackets (`[--addr …]`); examples (`storm echo --proto ws &`)
//!   have none. Indented lines continue the line above; a line `NAME: …` defines
//!   the shorthand `[NAME …]` for the synopses of its block.
//! - every `--option` of its synopsis (shorthands expanded) is an option
//!   (or an alias) in its `--help`;
//! - every option its `--help` lists is in its synopsis, or in an options
//!   table of its README section (the tables after its synopsis, up to the
//!   next heading), except `--help`, `--version` and the global options
//!   (those of `storm --help`), which must be rows of README's table of
//!   options of every command instead;
//! - `[POLICY FLAGS]` stands for the flags of README's policy table (the
//!   first table after the text that introduces `[POLICY FLAGS]`), and those
//!   are exactly the options of the "Policies and limits" section of the
//!   `--help` of every command whose synopsis uses it.
//!
//! The help is read by structure, not by columns: an option is a line that
//! holds nothing but option names and value names (`-h, --help`,
//! `--tls <CERT_PEM> <KEY_PEM>`), a section a line `Heading:` at the
//! margin, a command a line of a `Commands:` section. Every mismatch is
//! collected, and the test fails once listing them all.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// The README's shorthand for the policy flags.
const POLICY_FLAGS: &str = "POLICY FLAGS";
/// The `--help` section that lists the policy flags.
const POLICY_SECTION: &str = "Policies and limits";
/// The first column header of README's table of the global options.
const GLOBAL_TABLE: &str = "option (every command)";

/// `storm ARGS… --help`'s output; panics if it does not exit 0.
fn help(path: &[String]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_storm"))
        .args(path)
        .arg("--help")
        .env_clear()
        .output()
        .expect("storm runs");
    assert!(
        output.status.success(),
        "storm {} --help failed: {}",
        path.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 help")
}

/// One command's `--help`, read by structure.
struct Help {
    /// Each option's long name (`--addr`), with the section it is listed in.
    options: BTreeMap<String, String>,
    /// The long aliases (`[alias: --max-frame]`): accepted, not listed.
    aliases: BTreeSet<String>,
    /// The subcommands (`help` left out); empty for a leaf command.
    commands: Vec<String>,
}

/// Whether `word` is a long option name, `--` and lower-case words.
fn is_long(word: &str) -> bool {
    word.strip_prefix("--").is_some_and(|name| {
        name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    })
}

/// The long name of an option line: a line of only `-x,`, `--name` and
/// `<VALUE>` words (`<VALUE>...` too); `None` for any other line.
fn option_line(line: &str) -> Option<String> {
    let mut long = None;
    for word in line.split_whitespace() {
        if is_long(word) {
            if long.is_some() {
                return None;
            }
            long = Some(word.to_string());
        } else if word.len() == 3 && word.starts_with('-') && word.ends_with(',') {
            // A short name, `-h,`.
        } else if !(word.starts_with('<') && word.trim_end_matches("...").ends_with('>')) {
            return None;
        }
    }
    long
}

/// Every `--name` in `text`, in order.
fn longs(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| is_long(word))
        .map(str::to_string)
        .collect()
}

fn parse_help(text: &str) -> Help {
    let mut help = Help {
        options: BTreeMap::new(),
        aliases: BTreeSet::new(),
        commands: Vec::new(),
    };
    let mut section = String::new();
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line.trim_end_matches(':').to_string();
        } else if section == "Commands" {
            // `  name  what it does`: the first word of a line of the section.
            if let Some(name) = line.split_whitespace().next()
                && line.starts_with("  ")
                && !line.starts_with("   ")
                && name != "help"
            {
                help.commands.push(name.to_string());
            }
        } else if let Some(name) = option_line(line) {
            help.options.insert(name, section.clone());
        } else if let Some(rest) = line.trim().strip_prefix("[alias") {
            help.aliases.extend(longs(rest));
        }
    }
    help
}

/// A synopsis: its text (after `storm `), continuation lines and expanded
/// shorthands included, and the options its README section's tables list.
struct Synopsis {
    text: String,
    /// The option table rows of its section (after its block, up to the
    /// next heading): the `--name`s of their first cells.
    table: BTreeSet<String>,
}

/// The rows' first-cell `--name`s of the Markdown table starting at
/// `lines[0]` (a `|` line), and the table's first column header.
fn table(lines: &[&str]) -> (String, BTreeSet<String>) {
    let header = lines[0]
        .trim()
        .trim_start_matches('|')
        .split('|')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let rows = lines
        .iter()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .flat_map(|line| longs(line.trim_start_matches('|').split('|').next().unwrap_or("")))
        .collect();
    (header, rows)
}

/// README, read: the synopses by the command line they start with (the
/// line's words before its first option or argument are matched against
/// the binary's commands later), the policy table and the global table.
struct Readme {
    /// `(the line's text after "storm ", synopsis)`.
    synopses: Vec<(String, Synopsis)>,
    policy: BTreeSet<String>,
    global: BTreeSet<String>,
}

fn parse_readme(readme: &str) -> Readme {
    let lines: Vec<&str> = readme.lines().collect();
    let mut synopses = Vec::new();
    let mut policy = None;
    let mut global = BTreeSet::new();
    let mut policy_named = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("```") {
            let start = i + 1;
            let end = start
                + lines[start..]
                    .iter()
                    .position(|line| line.starts_with("```"))
                    .expect("a closed code block");
            if line == "```text"
                && lines[start].starts_with("storm ")
                && lines[start..end].iter().any(|line| line.contains('['))
            {
                synopses.extend(block(&lines[start..end], section_tables(&lines[end..])));
            }
            i = end + 1;
            continue;
        }
        if line.contains(&format!("`[{POLICY_FLAGS}]`")) {
            policy_named = true;
        }
        if line.starts_with('|') {
            let (header, rows) = table(&lines[i..]);
            if header == GLOBAL_TABLE {
                global.extend(rows);
            } else if policy_named && policy.is_none() {
                policy = Some(rows);
            }
            while i < lines.len() && lines[i].starts_with('|') {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    Readme {
        synopses,
        policy: policy.expect("README defines [POLICY FLAGS] and lists them in a table"),
        global,
    }
}

/// The option rows of every table from `lines` to the next heading.
fn section_tables(lines: &[&str]) -> BTreeSet<String> {
    let mut rows = BTreeSet::new();
    let end = lines
        .iter()
        .position(|line| line.starts_with('#'))
        .unwrap_or(lines.len());
    for (i, line) in lines[..end].iter().enumerate() {
        if line.starts_with('|') && (i == 0 || !lines[i - 1].starts_with('|')) {
            rows.extend(table(&lines[i..end]).1);
        }
    }
    rows
}

/// The synopses of one ```text block: each `storm …` line with the indented
/// lines after it, its `[NAME …]` shorthands replaced by the block's
/// `NAME: …` definitions (`[POLICY FLAGS]` stays, for the caller).
fn block(lines: &[&str], table: BTreeSet<String>) -> Vec<(String, Synopsis)> {
    // Join continuation lines to the line they continue.
    let mut entries: Vec<String> = Vec::new();
    for line in lines {
        match entries.last_mut() {
            Some(last) if line.starts_with(char::is_whitespace) => {
                last.push(' ');
                last.push_str(line.trim());
            }
            _ => entries.push(line.trim().to_string()),
        }
    }
    let mut definitions = BTreeMap::new();
    let mut commands = Vec::new();
    for entry in entries {
        if let Some(rest) = entry.strip_prefix("storm ") {
            commands.push(rest.to_string());
        } else if let Some((name, body)) = entry.split_once(':')
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_' || c == ' ')
        {
            definitions.insert(name.to_string(), body.to_string());
        } else {
            panic!(
                "a synopsis block holds a line that is neither `storm …` nor `NAME: …`: {entry:?}"
            );
        }
    }
    commands
        .into_iter()
        .map(|mut text| {
            for (name, body) in &definitions {
                for shorthand in [
                    format!("[{name} …]"),
                    format!("[{name}...]"),
                    format!("[{name}]"),
                ] {
                    text = text.replace(&shorthand, body);
                }
            }
            (
                text.clone(),
                Synopsis {
                    text,
                    table: table.clone(),
                },
            )
        })
        .collect()
}

/// Every leaf command of the binary: `["echo"]`, `["client", "broker",
/// "request"]`, … with its help; and the global options.
fn commands() -> (Vec<(Vec<String>, Help)>, BTreeSet<String>) {
    let top = parse_help(&help(&[]));
    let global = top
        .options
        .keys()
        .filter(|name| !matches!(name.as_str(), "--help" | "--version"))
        .cloned()
        .collect();
    let mut leaves = Vec::new();
    let mut pending: Vec<Vec<String>> = top.commands.iter().map(|c| vec![c.clone()]).collect();
    while let Some(path) = pending.pop() {
        let parsed = parse_help(&help(&path));
        if parsed.commands.is_empty() {
            leaves.push((path, parsed));
        } else {
            for command in &parsed.commands {
                let mut sub = path.clone();
                sub.push(command.clone());
                pending.push(sub);
            }
        }
    }
    leaves.sort_by(|a, b| a.0.cmp(&b.0));
    (leaves, global)
}

#[test]
fn every_synopsis_matches_its_help() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let readme = parse_readme(&readme);
    let (commands, global) = commands();
    assert!(
        commands.len() >= 10,
        "the binary lists its commands: {:?}",
        commands.iter().map(|c| c.0.join(" ")).collect::<Vec<_>>()
    );
    let mut problems = Vec::new();

    for name in &global {
        if !readme.global.contains(name) {
            problems.push(format!(
                "global option {name} (storm --help) is not a row of README's `{GLOBAL_TABLE}` table"
            ));
        }
    }

    // Which command each synopsis is of: the longest command whose words
    // start it.
    let mut by_command: BTreeMap<String, Vec<&Synopsis>> = BTreeMap::new();
    for (line, synopsis) in &readme.synopses {
        let words: Vec<&str> = line.split_whitespace().collect();
        let command = commands
            .iter()
            .map(|(path, _)| path)
            .filter(|path| {
                path.len() <= words.len() && path.iter().zip(&words).all(|(a, b)| a == b)
            })
            .max_by_key(|path| path.len());
        match command {
            Some(path) => by_command.entry(path.join(" ")).or_default().push(synopsis),
            None => problems.push(format!(
                "README synopsis of no command of the binary: storm {line}"
            )),
        }
    }

    for (path, help) in &commands {
        let name = path.join(" ");
        let Some(synopses) = by_command.get(&name) else {
            problems.push(format!("storm {name}: no synopsis in README"));
            continue;
        };
        let mut documented = BTreeSet::new();
        for synopsis in synopses {
            let in_synopsis = longs(&synopsis.text);
            for option in &in_synopsis {
                if !help.options.contains_key(option) && !help.aliases.contains(option) {
                    problems.push(format!(
                        "storm {name}: README's synopsis has {option}, its --help has no such option"
                    ));
                }
            }
            documented.extend(in_synopsis);
            documented.extend(synopsis.table.iter().cloned());
            if synopsis.text.contains(&format!("[{POLICY_FLAGS}]")) {
                documented.extend(readme.policy.iter().cloned());
                let section: BTreeSet<String> = help
                    .options
                    .iter()
                    .filter(|(_, section)| section.as_str() == POLICY_SECTION)
                    .map(|(option, _)| option.clone())
                    .collect();
                let only_help: Vec<_> = section.difference(&readme.policy).collect();
                let only_readme: Vec<_> = readme.policy.difference(&section).collect();
                if !only_help.is_empty() || !only_readme.is_empty() {
                    problems.push(format!(
                        "storm {name}: its --help's \"{POLICY_SECTION}\" differs from README's \
                         [{POLICY_FLAGS}]: only in --help {only_help:?}, only in README {only_readme:?}"
                    ));
                }
            }
        }
        for option in help.options.keys() {
            let exempt =
                matches!(option.as_str(), "--help" | "--version") || global.contains(option);
            if !exempt && !documented.contains(option) {
                problems.push(format!(
                    "storm {name}: --help lists {option}, README's synopsis and options table do not"
                ));
            }
        }
    }

    assert!(
        problems.is_empty(),
        "README.md and --help disagree:\n  {}",
        problems.join("\n  ")
    );
}
