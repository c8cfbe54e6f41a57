//! `rmnic-vmm ctl`: the control API's command-line client, and the serial relay the emulated
//! host runs (`rmnic-vmm ctl relay`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use rmnic_control::protocol::TraceFormat;
use rmnic_control::{Client, Request};

/// Talk to a running rmnic-vmm (or rmnic-device-server) through its control socket.
#[derive(Debug, Parser)]
#[command(name = "rmnic-vmm ctl")]
pub struct CtlCli {
    /// The control socket (`--api-socket` of the VMM or the device server).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,

    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `ctl` commands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Device counters, live contexts, oracle counts, active faults.
    Stats,
    /// Coherence violations the oracle recorded.
    Violations,
    /// Injected faults.
    Fault {
        /// set, clear or list.
        #[command(subcommand)]
        action: FaultAction,
    },
    /// A context's TLB entries (VA, size, frame, permissions, fill id).
    Tlb {
        /// Context number.
        context: u8,
    },
    /// Per page: the device TLB's translation next to the CPU page tables'.
    Snapshot {
        /// Context number.
        context: u8,
        /// First address (0x... or decimal).
        #[arg(value_parser = parse_number)]
        va: u64,
        /// Bytes (0x... or decimal).
        #[arg(value_parser = parse_number)]
        len: u64,
    },
    /// The device event log.
    Trace {
        /// `chrome` (Perfetto / chrome://tracing JSON) or `text`.
        #[arg(long, default_value = "chrome", value_parser = parse_format)]
        format: TraceFormat,
        /// Write it here instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Relay a serial port to the socket (run inside the emulated host by its init).
    Relay {
        /// The serial port the outside reaches (e.g. /dev/ttyS1).
        #[arg(long, value_name = "DEV")]
        port: PathBuf,
    },
}

/// `fault` actions.
#[derive(Debug, Subcommand)]
pub enum FaultAction {
    /// Replace the injected faults (`--fault` syntax).
    Set {
        /// Modes, comma-separated.
        modes: String,
        /// Seed of the random choices [default: the current one].
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Stop injecting.
    Clear,
    /// Show the active faults, the seed and every mode.
    List,
}

fn parse_number(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("'{s}' is not a number"))
}

fn parse_format(s: &str) -> Result<TraceFormat, String> {
    match s {
        "chrome" | "json" | "perfetto" => Ok(TraceFormat::Chrome),
        "text" => Ok(TraceFormat::Text),
        _ => Err(format!("'{s}' is not a trace format: use chrome or text")),
    }
}

impl CtlCommand {
    /// The request this command sends (`None` for `relay`).
    pub fn request(&self) -> Option<Request> {
        Some(match self {
            Self::Stats => Request::Stats,
            Self::Violations => Request::Violations,
            Self::Fault { action } => match action {
                FaultAction::Set { modes, seed } => Request::FaultSet {
                    modes: modes.clone(),
                    seed: *seed,
                },
                FaultAction::Clear => Request::FaultClear,
                FaultAction::List => Request::FaultList,
            },
            Self::Tlb { context } => Request::Tlb { context: *context },
            Self::Snapshot { context, va, len } => Request::Snapshot {
                context: *context,
                va: *va,
                len: *len,
            },
            Self::Trace { format, .. } => Request::Trace { format: *format },
            Self::Relay { .. } => return None,
        })
    }
}

/// Runs `rmnic-vmm ctl ...`; `Err` is the message for stderr.
pub fn run(cli: CtlCli) -> Result<(), String> {
    let Some(request) = cli.command.request() else {
        let CtlCommand::Relay { port } = &cli.command else {
            return Err("no request".into());
        };
        return rmnic_control::relay::run(port, &cli.socket)
            .map_err(|e| format!("relay {}: {e}", port.display()));
    };
    let response = Client::connect(&cli.socket)
        .and_then(|mut client| client.request(&request))
        .map_err(|e| e.to_string())?;
    if !response.ok {
        return Err(response.error.unwrap_or_else(|| "failed".into()));
    }
    let result = response.result.unwrap_or_default();
    let text = match result {
        serde_json::Value::String(text) => text,
        other => serde_json::to_string_pretty(&other).map_err(|e| e.to_string())? + "\n",
    };
    match &cli.command {
        CtlCommand::Trace {
            output: Some(path), ..
        } => std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display())),
        _ => {
            print!("{text}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<CtlCli, clap::Error> {
        CtlCli::try_parse_from(std::iter::once("ctl").chain(args.iter().copied()))
    }

    #[test]
    fn commands_become_requests() {
        let cli = parse(&["--socket", "/s", "snapshot", "3", "0x7f0000", "8192"]).expect("cli");
        assert_eq!(
            cli.command.request(),
            Some(Request::Snapshot {
                context: 3,
                va: 0x7f_0000,
                len: 8192
            })
        );
        let cli =
            parse(&["--socket", "/s", "fault", "set", "evict:0.5", "--seed", "4"]).expect("cli");
        assert_eq!(
            cli.command.request(),
            Some(Request::FaultSet {
                modes: "evict:0.5".into(),
                seed: Some(4)
            })
        );
        assert!(parse(&["--socket", "/s", "tlb", "300"]).is_err());
        assert!(parse(&["--socket", "/s", "trace", "--format", "xml"]).is_err());
        assert!(parse(&["stats"]).is_err());
    }

    #[test]
    fn a_missing_server_is_a_clear_error() {
        let cli = parse(&["--socket", "/nonexistent/rmnic.sock", "stats"]).expect("cli");
        let error = run(cli).expect_err("no server");
        assert!(error.contains("/nonexistent/rmnic.sock"), "{error}");
    }
}
