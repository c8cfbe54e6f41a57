/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * rmnic user-space ABI for C programs. Mirrors guest-driver/abi/src/abi.rs, which is the
 * source of truth (the kernel module compiles that file); a test in rmnic-abi keeps the
 * numbers below in step with it.
 */
#ifndef RMNIC_UAPI_H
#define RMNIC_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define RMNIC_ABI_VERSION 1

struct rmnic_version_info {
	__u32 abi_version;
	__u32 driver_version;
	__u16 pci_vendor;
	__u16 pci_device;
	__u32 device_id;
	__u32 device_version;
	__u32 device_caps;
};

struct rmnic_scratch_probe {
	__u32 value;
	__u32 readback;
};

#define RMNIC_IOC_VERSION _IOR('r', 0x00, struct rmnic_version_info)
#define RMNIC_IOC_SCRATCH _IOWR('r', 0x01, struct rmnic_scratch_probe)

#endif /* RMNIC_UAPI_H */
