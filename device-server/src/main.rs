//! `rmnic-device-server --socket PATH`: serves one rmnic device over vfio-user.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use std::sync::Arc;

use rmnic_device::inject::injector_named;
use rmnic_device::oracle::{CheckMode, Oracle};
use rmnic_device::RmnicConfig;
use rmnic_device_server::{RmnicFunction, Server};

#[derive(Parser)]
#[command(about = "Serves the rmnic device model over vfio-user (e.g. to QEMU's vfio-user-pci)")]
struct Cli {
    /// Unix socket to listen on (must not exist).
    #[arg(long)]
    socket: PathBuf,
    /// Device worker threads.
    #[arg(long, default_value_t = rmnic_device::rmnic::DEFAULT_WORKERS)]
    workers: usize,
    /// Keep serving after the client disconnects (the next client gets a reset device).
    #[arg(long)]
    persist: bool,
    /// What the coherence oracle checks: `off`, `full` or `sample:N` (docs/oracle.md). Its
    /// summary is printed when each client leaves.
    #[arg(long, value_name = "MODE", default_value = "full")]
    coherence_check: CheckMode,
    /// Device-TLB faults to inject, comma-separated (docs/fault-injection.md).
    #[arg(long, value_name = "MODE", default_value = "none")]
    fault: String,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RMNIC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // seed wired by the CLI in the main branch
    let fault = match injector_named(&cli.fault, 0) {
        Ok(fault) => fault,
        Err(e) => {
            eprintln!("rmnic-device-server: {e}");
            return ExitCode::from(2);
        }
    };
    let oracle = Arc::new(Oracle::new(cli.coherence_check, fault));
    let config = RmnicConfig {
        workers: cli.workers,
        injector: oracle.clone(),
        ..RmnicConfig::default()
    };
    let function = match RmnicFunction::new(config) {
        Ok(function) => function,
        Err(e) => {
            eprintln!("rmnic-device-server: {e}");
            return ExitCode::from(2);
        }
    };
    let mut server = match Server::bind(&cli.socket, function) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("rmnic-device-server: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "rmnic-device-server: serving one rmnic device on {}",
        cli.socket.display()
    );
    loop {
        // Only a failure to accept ends the server; a client's own connection errors end
        // that connection (`serve_one`).
        match server.serve_one() {
            Ok(stats) => {
                eprintln!(
                    "rmnic-device-server: client gone after {} requests ({} refused)",
                    stats.requests, stats.errors
                );
                if cli.coherence_check != CheckMode::Off {
                    for line in oracle.report() {
                        eprintln!("rmnic-device-server: {line}");
                    }
                }
            }
            Err(e) => {
                eprintln!("rmnic-device-server: {e}");
                return ExitCode::FAILURE;
            }
        }
        if !cli.persist {
            return ExitCode::SUCCESS;
        }
    }
}
