use std::process::ExitCode;

use clap::Parser;
use mitigator::cli::Cli;

fn main() -> ExitCode {
    // clap exits with status 2 on usage errors by itself.
    let cli = Cli::parse();
    match cli.execute() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("mitigator: {}", msg.join(": "));
            ExitCode::from(1)
        }
    }
}
