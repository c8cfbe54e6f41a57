//! `rmnic-device-server --socket PATH`: serves one rmnic device over vfio-user.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use std::sync::Arc;

use rmnic_control::{ApiServer, DeviceControl, FaultSwitch};
use rmnic_device::oracle::{CheckMode, Oracle};
use rmnic_device::RmnicConfig;
use rmnic_device_server::fabric_link::{self, FabricArgs};
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
    /// Device-TLB faults to inject (repeatable or comma-separated; docs/fault-injection.md).
    #[arg(long, value_name = "MODE")]
    fault: Vec<String>,
    /// Seed of every random choice fault injection makes [default: from the clock; printed].
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Serve the control API on this Unix socket (`rmnic-vmm ctl --socket PATH ...`).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Write the device's event trace here each time a client leaves (`.json`: Chrome/Perfetto
    /// trace JSON; otherwise text).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// A lean event log: no TLB hits, register writes or interrupts (markers stay).
    #[arg(long)]
    trace_lean: bool,
    /// The fabric link to another rmnic device (remote segments; docs/fabric.md).
    #[command(flatten)]
    fabric: FabricArgs,
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
    let modes = if cli.fault.is_empty() {
        "none".to_string()
    } else {
        cli.fault.join(",")
    };
    let seed = cli.seed.unwrap_or_else(rmnic_device::inject::clock_seed);
    let faults = match FaultSwitch::new(&modes, seed) {
        Ok(faults) => Arc::new(faults),
        Err(e) => {
            eprintln!("rmnic-device-server: {e}");
            return ExitCode::from(2);
        }
    };
    if modes != "none" {
        eprintln!(
            "rmnic-device-server: injecting {modes} with seed {seed} (replay: --seed {seed})"
        );
    }
    let oracle = Arc::new(Oracle::new(cli.coherence_check, faults.clone()));
    let mut config = RmnicConfig {
        workers: cli.workers,
        injector: oracle.clone(),
        ..RmnicConfig::default()
    };
    if cli.trace.is_some() || cli.api_socket.is_some() {
        config.event_log_capacity = rmnic_control::trace::TRACE_EVENTS;
    }
    if cli.trace_lean {
        config.event_mask = rmnic_device::events::EVENT_LEAN;
    }
    let function = match RmnicFunction::new(config) {
        Ok(function) => function,
        Err(e) => {
            eprintln!("rmnic-device-server: {e}");
            return ExitCode::from(2);
        }
    };
    let endpoint = function.device().fabric_endpoint();
    // The link comes up on its own thread while the guest boots; it lives as long as the
    // process.
    let _link = fabric_link::start(&cli.fabric, endpoint.clone(), "rmnic-device-server");
    let inspector = function.inspector();
    let events = inspector.event_log();
    oracle.watch_events(events.clone());
    let _api = match &cli.api_socket {
        None => None,
        Some(path) => {
            let control = DeviceControl::new(inspector, Some(oracle.clone()), faults.clone());
            match ApiServer::start(path, control) {
                Ok(api) => {
                    eprintln!("rmnic-device-server: control API on {}", path.display());
                    Some(api)
                }
                Err(e) => {
                    eprintln!("rmnic-device-server: {e}");
                    return ExitCode::from(2);
                }
            }
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
                if cli.fabric.enabled() {
                    eprintln!(
                        "rmnic-device-server: {}",
                        fabric_link::summary(&cli.fabric, &endpoint)
                    );
                }
                if let Some(path) = &cli.trace {
                    match rmnic_control::trace::write(path, &events) {
                        Ok(n) => eprintln!(
                            "rmnic-device-server: {n} device events written to {}",
                            path.display()
                        ),
                        Err(e) => eprintln!("rmnic-device-server: trace {}: {e}", path.display()),
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
