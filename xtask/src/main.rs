//! `cargo xtask`: the project's build orchestration.
//!
//! - `images`: install what is missing, build kernel, driver, guest programs and rmnic-vmm,
//!   pack the initramfs images (heavy steps cached in `~/.cache/rmnic`).
//! - `demo`: `images`, then boot the guest and show the device through the driver.
//! - `test`: `images`, then `cargo test --workspace` (unit and integration tests).
//! - `run`: `images`, then boot the guest running any `rmnic-guest` subcommand.
//! - `bench`: the device-model benchmarks (criterion), each against its baseline.

mod cache;
mod deps;
mod driver;
mod images;
mod initramfs;
mod kernel;
mod programs;
mod progress;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rmnic_tests::{GuestRun, HostMode, Images};

#[derive(Parser)]
#[command(about = "rmnic build orchestration")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel, driver, guest programs, rmnic-vmm and initramfs images.
    Images,
    /// Build, boot the guest, load the driver and print the device ID from inside.
    Demo,
    /// Build, then run every unit and integration test.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the device-model benchmarks (criterion), each side by side with its baseline.
    Bench {
        /// Extra arguments for `cargo bench` (e.g. a benchmark name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build, then boot the guest running `rmnic-guest <ARGS>`.
    Run {
        /// Guest vCPUs.
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// `rmnic-guest` subcommand and arguments.
        #[arg(required = true, trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn repo_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(PathBuf::from)
        .context("xtask lives one level below the repository root")
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let repo = repo_root()?;
    match cli.command {
        Cmd::Images => {
            deps::ensure()?;
            images::build(&repo)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo => {
            deps::ensure()?;
            images::build(&repo)?;
            boot(&["demo".to_string()], 2)
        }
        Cmd::Run { cpus, args } => {
            deps::ensure()?;
            images::build(&repo)?;
            boot(&args, cpus)
        }
        Cmd::Bench { args } => {
            let start = progress::step("cargo bench -p rmnic-device");
            progress::run(
                Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                    .current_dir(&repo)
                    .args(["bench", "-p", "rmnic-device", "--"])
                    .args(&args),
            )?;
            progress::done("benchmarks", start);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Test { args } => {
            deps::ensure()?;
            lint(&repo)?;
            let dir = images::build(&repo)?;
            let start = progress::step("cargo test --workspace");
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(&repo)
                .env("RMNIC_IMAGES", &dir)
                .args(["test", "--workspace"])
                .args(&args)
                .status()
                .context("Cannot run cargo test")?;
            progress::done("tests", start);
            if !status.success() {
                bail!("cargo test failed ({status})");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `cargo fmt --check` and `cargo clippy -D warnings` over the workspace: host code must be
/// formatted and lint-clean before anything boots.
fn lint(repo: &std::path::Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let start = progress::step("cargo fmt --check, cargo clippy -D warnings");
    progress::run(
        Command::new(&cargo)
            .current_dir(repo)
            .args(["fmt", "--all", "--check"]),
    )?;
    progress::run(Command::new(&cargo).current_dir(repo).args([
        "clippy",
        "--quiet",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    progress::done("lint", start);
    Ok(())
}

/// Boots the guest running `rmnic-guest <args>`, echoing its console; exits with the guest's
/// status.
fn boot(args: &[String], cpus: u32) -> Result<ExitCode> {
    let images = Images::locate()?;
    let mode = HostMode::from_env()?;
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut guest = GuestRun::new(&words);
    guest.cpus = cpus;
    guest.echo = true;
    let start = progress::step(&format!(
        "Booting the guest ({mode} mode, {cpus} vCPUs): rmnic-guest {}",
        args.join(" ")
    ));
    let outcome = rmnic_tests::launch::run_in(mode, &images, &guest)?;
    progress::done(&format!("guest run (status {})", outcome.status), start);
    if let Some(boot) = outcome.vmm_start_to_guest_init() {
        eprintln!(
            "    rmnic-vmm start to guest init: {}",
            progress::fmt_duration(boot)
        );
    }
    Ok(ExitCode::from(
        u8::try_from(outcome.status).unwrap_or(u8::MAX),
    ))
}
