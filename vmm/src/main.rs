//! `rmnic-vmm` binary: parse arguments, set up logging, run the VM, turn the outcome into
//! an exit status and at most one line on stderr. All logic lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use rmnic_vmm::cli::Cli;
use rmnic_vmm::STATUS_START_FAILURE;

fn main() -> ExitCode {
    init_logging();
    if std::env::args_os().nth(1).is_some_and(|a| a == "ctl") {
        return ctl();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help / --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let rendered = e.to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("rmnic-vmm: error: {first}");
            return ExitCode::from(STATUS_START_FAILURE);
        }
    };
    match run(cli) {
        Ok(reason) => {
            if let Some(msg) = reason.message() {
                eprintln!("rmnic-vmm: {msg}");
            }
            ExitCode::from(reason.status())
        }
        Err(e) => {
            eprintln!("rmnic-vmm: error: {e:#}");
            ExitCode::from(STATUS_START_FAILURE)
        }
    }
}

/// `rmnic-vmm ctl ...`: exit status 0 on success, 1 with one line on stderr otherwise.
fn ctl() -> ExitCode {
    let cli = match rmnic_vmm::ctl::CtlCli::try_parse_from(std::env::args_os().skip(1)) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match rmnic_vmm::ctl::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rmnic-vmm ctl: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<rmnic_vmm::ExitReason> {
    let config = cli.into_config(|k| std::env::var(k).ok())?;
    let reason = rmnic_vmm::run_vm(&config, Box::new(std::io::stdout()))?;
    Ok(reason)
}

/// Logs go to stderr and are off unless RUST_LOG says otherwise.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
