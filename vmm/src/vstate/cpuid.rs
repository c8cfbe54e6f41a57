//! Per-vCPU CPUID: what KVM_GET_SUPPORTED_CPUID offers, with the topology leaves fixed up
//! so each vCPU reports its own APIC ID and all of them agree on the package size.
//!
//! Topology chosen: one package of `num_cpus` cores, one thread each, APIC ID = vCPU
//! index. Intel leaves 0x1/0x4/0xB/0x1F and AMD leaves 0x8000_0008/0x8000_001E carry it.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_ADDR_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

/// CPUID.1:ECX bit 31, "running under a hypervisor".
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28, "max APIC IDs field is valid".
const EDX_HTT: u32 = 1 << 28;
/// CPUID.1:ECX bit 24, LAPIC TSC-deadline timer mode. KVM emulates it when it has
/// KVM_CAP_TSC_DEADLINE_TIMER but leaves advertising it to the VMM; with it Linux skips
/// LAPIC timer calibration (which fails under nested emulation).
const ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Extended-topology level types (leaf 0xB/0x1F ECX[15:8]).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits of APIC ID needed to number `n` cores: ceil(log2(n)).
fn core_id_bits(n: u32) -> u32 {
    n.max(1).next_power_of_two().trailing_zeros()
}

/// Rewrites `entries` (as returned by KVM_GET_SUPPORTED_CPUID) for vCPU `cpu` of
/// `num_cpus`; `tsc_deadline` says whether KVM can emulate the TSC-deadline timer.
pub fn fixup_for_vcpu(entries: &mut [kvm_cpuid_entry2], cpu: u8, num_cpus: u8, tsc_deadline: bool) {
    let apic_id = u32::from(cpu);
    let n = u32::from(num_cpus).max(1);
    let shift = core_id_bits(n);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC ID, EBX[23:16] addressable logical processors.
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((n.min(255)) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if n > 1 {
                    e.edx |= EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: addressable core IDs in the package - 1.
                let cores = ((1u32 << shift) - 1).min(63);
                e.eax = (e.eax & 0x03ff_ffff) | (cores << 26);
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0; // no SMT bits
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = n;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        // Invalid level: ends the enumeration.
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_AMD_ADDR_SIZES => {
                // ECX[15:12] APIC ID size, ECX[7:0] number of cores - 1.
                e.ecx = (e.ecx & !0xf0ff) | (shift << 12) | (n - 1).min(255);
            }
            LEAF_AMD_EXT_APIC_ID => {
                e.eax = apic_id;
                // EBX[15:8] threads per core - 1 = 0, EBX[7:0] core ID.
                e.ebx = (e.ebx & !0xffff) | (apic_id & 0xff);
                e.ecx &= !0x7ff; // node 0, one node per package
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0000_0800,
            ..Default::default()
        }
    }

    fn table() -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(0x1, 0),
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
            leaf(0x8000_0008, 0),
            leaf(0x8000_001e, 0),
        ]
    }

    #[test]
    fn each_vcpu_reports_its_own_apic_id() {
        for cpu in 0..4u8 {
            let mut t = table();
            fixup_for_vcpu(&mut t, cpu, 4, false);
            assert_eq!(t[0].ebx >> 24, u32::from(cpu), "leaf 1");
            assert_eq!(t[0].ebx & 0xffff, 0x0800, "CLFLUSH size kept");
            for e in &t[1..4] {
                assert_eq!(e.edx, u32::from(cpu), "leaf 0xb.{}", e.index);
            }
            assert_eq!(t[5].eax, u32::from(cpu), "leaf 0x8000_001e");
        }
    }

    #[test]
    fn topology_counts_all_vcpus_in_one_package() {
        let mut t = table();
        fixup_for_vcpu(&mut t, 0, 3, true);
        assert_eq!((t[0].ebx >> 16) & 0xff, 3);
        assert_ne!(t[0].edx & EDX_HTT, 0);
        assert_ne!(t[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(t[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(
            (t[1].eax, t[1].ebx, (t[1].ecx >> 8) & 0xff),
            (0, 1, LEVEL_SMT)
        );
        assert_eq!(
            (t[2].eax, t[2].ebx, (t[2].ecx >> 8) & 0xff),
            (2, 3, LEVEL_CORE)
        );
        assert_eq!((t[3].ebx, (t[3].ecx >> 8) & 0xff), (0, 0));
        assert_eq!(t[4].ecx & 0xff, 2);
        assert_eq!((t[4].ecx >> 12) & 0xf, 2);
    }

    #[test]
    fn single_vcpu_needs_no_core_bits() {
        let mut t = table();
        fixup_for_vcpu(&mut t, 0, 1, false);
        assert_eq!(t[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(t[0].edx & EDX_HTT, 0);
        assert_eq!(t[2].eax, 0);
        assert_eq!(core_id_bits(64), 6);
        assert_eq!(core_id_bits(5), 3);
    }
}
