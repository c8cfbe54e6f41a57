//! The device model's benchmarks on this machine (`device/benches/device.rs`, criterion), as
//! rows of `cargo xtask bench`: criterion measures and keeps every sample in
//! `target/criterion/<id>/new/sample.json`, and the rows are read back from those files (a
//! sample is total time over iterations, so each gives the time of one iteration).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

use crate::bench::{Better, Row};
use crate::progress;

/// Criterion's record of one benchmark's samples.
#[derive(Deserialize)]
struct Samples {
    iters: Vec<f64>,
    times: Vec<f64>,
}

/// Bytes one iteration of the copy benchmarks moves (`BATCH` commands of the page run, see
/// `device/benches/device.rs`): 4 × 1 MiB and 4 × 2 MiB.
const COPY_BYTES: [(&str, f64); 2] = [("4k_pages_1mib", 4.0), ("2m_pages_2mib", 8.0)];

/// Runs the benchmarks (`quick`: criterion's `--quick`) and returns their rows.
pub fn rows(repo: &Path, quick: bool) -> Result<Vec<Row>> {
    let start = progress::step("device model on this machine: cargo bench -p rmnic-device");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(repo)
        .args(["bench", "-p", "rmnic-device", "--bench", "device", "--"]);
    if quick {
        cmd.arg("--quick");
    }
    progress::run(&mut cmd)?;
    progress::done("device model benchmarks", start);
    let dir = criterion_dir(repo);
    let per_iter = |id: &str| -> Result<Vec<f64>> {
        let path = dir.join(id).join("new").join("sample.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("criterion left no samples at {}", path.display()))?;
        let samples: Samples = serde_json::from_str(&text)
            .with_context(|| format!("{} is not criterion's sample file", path.display()))?;
        if samples.iters.len() != samples.times.len() || samples.iters.is_empty() {
            bail!("{}: no samples", path.display());
        }
        Ok(samples
            .times
            .iter()
            .zip(&samples.iters)
            .map(|(t, i)| t / i)
            .collect())
    };
    let mut rows = Vec::new();
    let hit = per_iter("tlb_lookup/hit")?;
    for (name, id) in [
        ("model-tlb-miss", "tlb_lookup/miss"),
        (
            "model-tlb-miss-2m-present",
            "tlb_lookup/miss_with_2m_entries",
        ),
    ] {
        rows.extend(Row::new(
            name,
            "host",
            "ns",
            Better::Lower,
            "a TLB hit",
            &per_iter(id)?,
            &hit,
            None,
        ));
    }
    for (label, (id, mib)) in ["model-copy-4k", "model-copy-2m"].iter().zip(COPY_BYTES) {
        let rate = |ns: Vec<f64>| -> Vec<f64> { ns.iter().map(|t| mib / (t * 1e-9)).collect() };
        rows.extend(Row::new(
            label,
            "host",
            "MiB/s",
            Better::Higher,
            "memcpy of the same bytes",
            &rate(per_iter(&format!("copy/translated/{id}"))?),
            &rate(per_iter(&format!("copy/memcpy/{id}"))?),
            None,
        ));
    }
    let one_page = per_iter("invalidation/range_4kib_1024_present")?;
    for present in [0, 64, 1024] {
        rows.extend(Row::new(
            &format!("model-invalidate-1g-{present}-entries"),
            "host",
            "ns",
            Better::Lower,
            "a 4 KiB invalidation, 1024 entries present",
            &per_iter(&format!("invalidation/range_1gib/{present}"))?,
            &one_page,
            None,
        ));
    }
    Ok(rows)
}

/// Where criterion writes (`CARGO_TARGET_DIR`, else the workspace's `target/`).
fn criterion_dir(repo: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo.join("target"), PathBuf::from)
        .join("criterion")
}
