//! The `mitigator` binary: parse the command line, run it, map the outcome
//! to an exit status. 0 success, 1 runtime error (the daemon refused, is
//! missing, a map is full, ...), 2 usage error (bad flags or arguments, a
//! malformed prefix or duration). Every error is one line on stderr.

use std::process::ExitCode;

use clap::{error::ErrorKind, CommandFactory, Parser};
use mitigator::{
    cli::{Cli, Command},
    prefix::is_usage_error,
};

const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(e),
    };
    // The daemon's own failures (bad config, unknown interface, corrupt
    // state) are runtime errors even when a prefix is to blame.
    let is_daemon = matches!(cli.command, Command::Run(_));
    match cli.execute() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("mitigator: {}", msg.join(": "));
            ExitCode::from(if !is_daemon && is_usage_error(&e) {
                EXIT_USAGE
            } else {
                EXIT_RUNTIME
            })
        }
    }
}

/// Help and version go out as clap prints them; every other parse error
/// becomes one line on stderr and exit status 2.
fn clap_exit(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            let sub = subcommand_in_args();
            eprintln!(
                "mitigator: {}",
                one_line(&e.render().to_string(), sub.as_deref())
            );
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The subcommand named on the command line, if any (for the --help hint
/// when clap's message carries no usage line).
fn subcommand_in_args() -> Option<String> {
    let cmd = Cli::command();
    std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .filter(|a| cmd.find_subcommand(a).is_some())
}

/// Condenses clap's multi-paragraph message into one line: the first
/// paragraph (without its `error: ` tag) and a pointer to the right --help.
fn one_line(rendered: &str, subcommand: Option<&str>) -> String {
    let first: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let msg = first.join(" ");
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
    let command: Vec<&str> = rendered
        .lines()
        .find_map(|l| l.strip_prefix("Usage: "))
        .map(|u| {
            u.split_whitespace()
                .take_while(|w| !w.starts_with(['<', '[', '-']))
                .collect()
        })
        .unwrap_or_default();
    if command.is_empty() {
        match subcommand {
            Some(sub) => format!("{msg} (see 'mitigator {sub} --help')"),
            None => format!("{msg} (see 'mitigator --help')"),
        }
    } else {
        format!("{msg} (see '{} --help')", command.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn clap_errors_become_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  <PREFIXES>...\n\nUsage: mitigator block <PREFIXES>...\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(rendered, Some("block")),
            "the following required arguments were not provided: <PREFIXES>... (see 'mitigator block --help')"
        );
        let rendered = "error: unrecognized subcommand 'frob'\n\nUsage: mitigator <COMMAND>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(rendered, None),
            "unrecognized subcommand 'frob' (see 'mitigator --help')"
        );
        let rendered = "error: invalid value '0s' for '--ttl <TTL>': too short\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(rendered, Some("block")),
            "invalid value '0s' for '--ttl <TTL>': too short (see 'mitigator block --help')"
        );
    }
}
