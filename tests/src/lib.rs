//! Test-bed harness: finds the images `cargo xtask images` built and boots the guest with a
//! chosen guest program, directly under `rmnic-vmm` or inside an emulated host, returning the
//! console output and the guest-chosen exit status; or two guests joined by a fabric link
//! ([`pair`]).

pub mod coherence_report;
pub mod emulated;
pub mod host;
pub mod images;
pub mod launch;
pub mod pair;
pub mod qemu_host;
pub mod verdict;

pub use emulated::EmulatedHost;
pub use host::HostMode;
pub use images::Images;
pub use launch::{run, GuestRun, LaunchError, Level1, Outcome};
pub use verdict::{BootTally, Verdict};
