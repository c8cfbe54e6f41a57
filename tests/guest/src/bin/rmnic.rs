//! `rmnic`: run one device operation from the guest's shell and print the context's counters.
//!
//! Each invocation opens a context, maps its own buffers, runs the operation, checks the
//! result against the CPU's view and prints the counters, e.g. `rmnic copy --len 1048576`.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use rmnic_abi::Context;
use rmnic_guest::Mapping;

#[derive(Parser)]
#[command(about = "Run an rmnic device operation and print the context counters")]
struct Cli {
    #[command(subcommand)]
    op: Op,
}

#[derive(Subcommand)]
enum Op {
    /// Driver and device identification.
    Info,
    /// COPY `len` bytes between two fresh buffers.
    Copy {
        /// Bytes to copy.
        #[arg(long, default_value_t = 65536)]
        len: usize,
    },
    /// FILL `len` bytes of a fresh buffer with `pattern`.
    Fill {
        /// Bytes to fill.
        #[arg(long, default_value_t = 65536)]
        len: usize,
        /// 64-bit pattern.
        #[arg(long, default_value_t = 0x5a5a_5a5a_5a5a_5a5a)]
        pattern: u64,
    },
    /// FETCH_ADD `addend` to a word `count` times.
    FetchAdd {
        /// Value added each time.
        #[arg(long, default_value_t = 1)]
        addend: u64,
        /// Number of operations.
        #[arg(long, default_value_t = 100)]
        count: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().op) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rmnic: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(op: Op) -> Result<()> {
    let ctx = Context::open()?;
    let start = std::time::Instant::now();
    match op {
        Op::Info => {
            let v = ctx.version()?;
            println!(
                "device {:#010x} spec {}.{} pci {:04x}:{:04x} caps {:#x}; driver {:#08x} ABI {}",
                v.device_id,
                v.device_version >> 16,
                v.device_version & 0xffff,
                v.pci_vendor,
                v.pci_device,
                v.device_caps,
                v.driver_version,
                v.abi_version
            );
        }
        Op::Copy { len } => {
            let mut src = Mapping::new(len, false)?;
            let dst = Mapping::new(len, false)?;
            for (i, b) in src.bytes_mut().iter_mut().enumerate() {
                *b = (i % 253) as u8;
            }
            ctx.copy(dst.addr(), src.addr(), len as u64)??;
            if dst.bytes() != src.bytes() {
                bail!("COPY produced wrong data");
            }
            println!("copied {len} bytes, data verified");
        }
        Op::Fill { len, pattern } => {
            let dst = Mapping::new(len, false)?;
            ctx.fill(dst.addr(), len as u64, pattern)??;
            let want = pattern.to_le_bytes();
            if !dst.bytes().chunks(8).all(|w| w == &want[..w.len()]) {
                bail!("FILL produced wrong data");
            }
            println!("filled {len} bytes with {pattern:#x}, data verified");
        }
        Op::FetchAdd { addend, count } => {
            let word = Mapping::new(rmnic_guest::PAGE, false)?;
            for _ in 0..count {
                ctx.fetch_add(word.addr(), addend)??;
            }
            let got = word.read_u64(0);
            if got != addend.wrapping_mul(count) {
                bail!(
                    "FETCH_ADD left {got}, expected {}",
                    addend.wrapping_mul(count)
                );
            }
            println!("{count} x FETCH_ADD {addend}: word is {got}");
        }
    }
    let s = ctx.stats()?;
    println!(
        "took {:.2} ms; context {} ASID {}: submitted {} completed {} faults {} drop-ins {}+{} (4K+2M) aborts {} invalidations received {} sent {} retries {}",
        start.elapsed().as_secs_f64() * 1e3,
        s.context,
        s.asid,
        s.submitted,
        s.completed,
        s.faults,
        s.dropins_4k,
        s.dropins_2m,
        s.aborts,
        s.invalidations_received,
        s.invalidations_sent,
        s.retries
    );
    Ok(())
}
