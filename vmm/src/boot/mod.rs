//! Everything written into guest memory before the first instruction runs: the memory
//! map, the kernel/initrd/command line and zero page, page tables, GDT, MP table.

pub mod gdt;
pub mod layout;
pub mod loader;
pub mod mptable;
pub mod paging;

pub use loader::{load_linux, BootError, BootInfo};
