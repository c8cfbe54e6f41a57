//! Integration tests that boot the real guest kernel with the real driver under rmnic-vmm
//! (directly or through the emulated host) and check what the guest reports.
//!
//! A boot costs 10 to 20 s through the emulated host, so the guest programs that pass together
//! share one boot ([`shared_boot`]: `probe`, then `coherence`); each test still asserts only on
//! its own program's lines, so a failure names what broke. Programs that must end the boot
//! with their own status (`fail`) get a boot of their own.

mod coherence;
mod failure;
mod probe;

use std::sync::OnceLock;

use rmnic_tests::{run, GuestRun, Images, Outcome};

/// Guest kernel option that poisons freed kmalloc objects (the driver allocates with kmalloc).
const SLAB_POISONING: &str = "slub_debug=P,kmalloc-*";

fn images() -> Images {
    Images::locate().unwrap_or_else(|e| panic!("{e}"))
}

/// The boot that `probe` and `coherence` share, made by whichever test asks first.
fn shared_boot() -> &'static Outcome {
    static BOOT: OnceLock<Result<Outcome, String>> = OnceLock::new();
    let boot = BOOT.get_or_init(|| {
        let mut guest = GuestRun::new(&probe::COMMAND).then(&coherence::COMMAND);
        // Slab poisoning for the driver's allocations: a use after free then oopses (status
        // 121) instead of reading stale bytes. It caught `/dev/rmnic`'s file operations being
        // freed on unbind while files stayed open (`teardown` group; docs/platform.md).
        guest.guest_append = format!("{} {SLAB_POISONING}", guest.guest_append);
        let outcome = run(&images(), &guest).map_err(|e| format!("boot failed: {e}"))?;
        eprintln!(
            "shared boot (probe + coherence): {} mode, {:.1} s in all, rmnic-vmm start to guest \
             init {:?}, status {}",
            outcome.mode,
            outcome.elapsed.as_secs_f64(),
            outcome.vmm_start_to_guest_init(),
            outcome.status
        );
        Ok(outcome)
    });
    match boot {
        Ok(outcome) => outcome,
        Err(err) => panic!("{err}"),
    }
}

/// The status the guest's init reported for the program `command` (its
/// `program exited with status N: <command>` line).
fn program_status(outcome: &Outcome, command: &[&str]) -> Option<i32> {
    let suffix = format!(": {}", command.join(" "));
    outcome
        .lines_with("rmnic-guest: program exited with status ")
        .find_map(|line| line.strip_suffix(&suffix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|status| status.parse().ok())
}
