//! Integration tests that boot the real guest kernel with the real driver under rmnic-vmm
//! (directly or through the emulated host) and check what the guest reports.
//!
//! A boot costs 10 to 20 s through the emulated host, so the guest programs that pass together
//! share one boot ([`shared_boot`]: `probe`, then `coherence`); each test still asserts only on
//! its own program's lines, so a failure names what broke. Programs that must end the boot
//! with their own status (`fail`) get a boot of their own.
//!
//! The probe and coherence checks run twice: in the machine's mode (direct, or emulated where
//! the CPU has no SVM/VMX) and in `qemu` mode, where QEMU hosts the device through
//! `rmnic-device-server` over vfio-user (the `*_in_qemu` tests).
//!
//! Segments across two guests boot two guests at once in qemu mode, their device servers
//! joined by a fabric link ([`remote`]).

mod coherence;
mod control;
mod failure;
mod faults;
mod oracle;
mod probe;
mod remote;
mod segments;
mod suite;

use std::sync::OnceLock;

use rmnic_tests::launch::run_in;
use rmnic_tests::{GuestRun, HostMode, Images, Outcome};

/// Guest kernel option that poisons freed kmalloc objects (the driver allocates with kmalloc).
const SLAB_POISONING: &str = "slub_debug=P,kmalloc-*";

fn images() -> Images {
    Images::locate().unwrap_or_else(|e| panic!("{e}"))
}

/// Where a test's boot runs.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// rmnic-vmm's mode: `RMNIC_HOST` if set, else direct where the CPU has SVM/VMX and
    /// emulated elsewhere.
    Default,
    /// QEMU with the device over vfio-user (`rmnic-device-server`).
    Qemu,
}

impl Mode {
    fn host(self) -> HostMode {
        match self {
            Self::Default => HostMode::vmm_from_env().unwrap_or_else(|e| panic!("{e}")),
            Self::Qemu => HostMode::Qemu,
        }
    }
}

/// The two boots each mode makes, each shared by the tests that read it.
#[derive(Clone, Copy, Debug)]
enum Boot {
    /// `probe`, then `coherence`, with slab poisoning.
    Suite,
    /// `probe`, then `fail --status 3`. Under rmnic-vmm the device model runs out of process
    /// here (`rmnic-device-server` over vfio-user), so this boot also checks rmnic-vmm's
    /// vfio-user client with the real driver.
    Failure,
}

/// The boot `which` in `mode`, made by whichever test asks first.
fn shared_boot_of(mode: Mode, which: Boot) -> &'static Outcome {
    type Slot = OnceLock<Result<Outcome, String>>;
    static BOOTS: [[Slot; 2]; 3] = [
        [OnceLock::new(), OnceLock::new()],
        [OnceLock::new(), OnceLock::new()],
        [OnceLock::new(), OnceLock::new()],
    ];
    let host = mode.host();
    let slot = match host {
        HostMode::Direct => 0,
        HostMode::Emulated => 1,
        HostMode::Qemu => 2,
    };
    let boot = BOOTS[slot][which as usize].get_or_init(|| {
        let guest = match which {
            Boot::Suite => {
                let mut guest = GuestRun::new(&probe::COMMAND).then(&coherence::command_for(host));
                // Slab poisoning for the driver's allocations: a use after free then oopses
                // (status 121) instead of reading stale bytes. It caught `/dev/rmnic`'s file
                // operations being freed on unbind while files stayed open (`teardown` group;
                // docs/platform.md).
                guest.guest_append = format!("{} {SLAB_POISONING}", guest.guest_append);
                guest
            }
            Boot::Failure => {
                let mut guest = GuestRun::new(&probe::COMMAND).then(&failure::COMMAND);
                guest.out_of_process_device = true;
                guest
            }
        };
        let outcome = run_in(host, &images(), &guest).map_err(|e| format!("boot failed: {e}"))?;
        eprintln!(
            "{which:?} boot: {} mode, {:.1} s in all, VMM start to guest init {:?}, status {}",
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

/// The boot that `probe` and `coherence` share in `mode`.
fn shared_boot(mode: Mode) -> &'static Outcome {
    shared_boot_of(mode, Boot::Suite)
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
