/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * rmnic user-space ABI for C programs. Mirrors guest-driver/abi/src/abi.rs, which is the
 * source of truth (the kernel module compiles that file); tests/tests/abi_consistency.rs
 * keeps the numbers below in step with it.
 */
#ifndef RMNIC_UAPI_H
#define RMNIC_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define RMNIC_ABI_VERSION 6

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

/* Opcodes and statuses: see docs/device-spec.md. */
enum rmnic_opcode {
	RMNIC_OP_NOP = 0, RMNIC_OP_COPY = 1, RMNIC_OP_FILL = 2, RMNIC_OP_READ64 = 3,
	RMNIC_OP_WRITE64 = 4, RMNIC_OP_FETCH_ADD = 5, RMNIC_OP_CAS = 6, RMNIC_OP_SWAP = 7,
	RMNIC_OP_FENCE = 8,
};

enum rmnic_status {
	RMNIC_ST_OK = 0, RMNIC_ST_FAULT_UNRESOLVED = 1, RMNIC_ST_PERMISSION = 2,
	RMNIC_ST_DEVICE_ERROR = 3, RMNIC_ST_INVALID_OPCODE = 4, RMNIC_ST_ABORTED = 5,
	RMNIC_ST_ALIGNMENT = 6, RMNIC_ST_INVALID_ARGUMENT = 7, RMNIC_ST_SEGMENT_INVALID = 8,
	RMNIC_ST_SEGMENT_BOUNDS = 9, RMNIC_ST_REMOTE_UNREACHABLE = 10,
};

#define RMNIC_CMD_FLAG_INTERRUPT 1
#define RMNIC_MAX_BATCH 256

struct rmnic_command {
	__u8 opcode;
	__u8 flags;
	__u16 reserved0;
	__u32 reserved1;
	__u64 id;
	__u64 addr0;
	__u64 addr1;
	__u64 length;
	__u64 operand0;
	__u64 operand1;
};

struct rmnic_completion {
	__u64 id;
	__u32 status;
	__u32 reserved;
	__u64 result;
	__u64 fault_va;
};

struct rmnic_submit {
	__u64 commands;	/* user pointer to struct rmnic_command[count] */
	__u32 count;
	__u32 queued;	/* out */
};

struct rmnic_wait {
	__u64 completions;	/* user pointer to struct rmnic_completion[max] */
	__u32 max;
	__u32 min;
	__u32 timeout_ms;
	__u32 count;	/* out */
};

struct rmnic_context_stats {
	__u64 submitted;
	__u64 completed;
	__u64 faults;
	__u64 dropins_4k;
	__u64 dropins_2m;
	__u64 aborts;
	__u64 invalidations_received;
	__u64 invalidations_sent;
	__u64 retries;
	__u32 asid;
	__u32 context;
};

#define RMNIC_IOC_VERSION _IOR('r', 0x00, struct rmnic_version_info)
#define RMNIC_IOC_SCRATCH _IOWR('r', 0x01, struct rmnic_scratch_probe)
#define RMNIC_IOC_SUBMIT _IOWR('r', 0x02, struct rmnic_submit)
#define RMNIC_IOC_WAIT _IOWR('r', 0x03, struct rmnic_wait)
#define RMNIC_IOC_STATS _IOR('r', 0x04, struct rmnic_context_stats)

/*
 * Segments (ABI 3): a process exports a page-aligned range of its address space; other
 * processes attach it to their own context and name (slot, offset) in commands, with
 * RMNIC_CMD_FLAG_SEGMENT_ADDR0/1 set for the addresses that are segment addresses.
 */

/* Permission bits of a segment (the read and write bits of a file mode). */
#define RMNIC_PERMIT_OWNER_READ 0400
#define RMNIC_PERMIT_OWNER_WRITE 0200
#define RMNIC_PERMIT_GROUP_READ 0040
#define RMNIC_PERMIT_GROUP_WRITE 0020
#define RMNIC_PERMIT_OTHER_READ 0004
#define RMNIC_PERMIT_OTHER_WRITE 0002
#define RMNIC_PERMIT_ALL 0666

/* Export: the segment may be written through. Attach: the attachment wants to write. */
#define RMNIC_SEGMENT_WRITABLE 1
/* Export: the other guest on the fabric may attach it too (by its segid; only the
 * RMNIC_PERMIT_OTHER_* bits apply). Attach: segid names a segment of the other guest. */
#define RMNIC_SEGMENT_REMOTE 2

#define RMNIC_CMD_FLAG_SEGMENT_ADDR0 2	/* addr0 is a segment address */
#define RMNIC_CMD_FLAG_SEGMENT_ADDR1 4	/* addr1 is a segment address */
#define RMNIC_MAX_ATTACHMENTS 8

/* A segment address: the attachment slot in bits 63:56, the offset in bits 55:0. */
#define RMNIC_SEGMENT_OFFSET_MASK ((((__u64)1) << 56) - 1)
#define RMNIC_SEGMENT_ADDRESS(slot, offset) \
	((((__u64)(slot)) << 56) | (((__u64)(offset)) & RMNIC_SEGMENT_OFFSET_MASK))

struct rmnic_segment_export {
	__u64 va;	/* page aligned */
	__u64 length;	/* non-zero multiple of the page size */
	__u32 flags;	/* RMNIC_SEGMENT_WRITABLE, RMNIC_SEGMENT_REMOTE */
	__u32 permit_mode;	/* RMNIC_PERMIT_* */
	__u64 segid;	/* out */
};

struct rmnic_segment_attach {
	__u64 segid;
	__u32 flags;	/* RMNIC_SEGMENT_WRITABLE, RMNIC_SEGMENT_REMOTE */
	__u32 slot;	/* out */
	__u64 length;	/* out: the segment's length */
};

#define RMNIC_IOC_EXPORT _IOWR('r', 0x05, struct rmnic_segment_export)
#define RMNIC_IOC_REMOVE _IOW('r', 0x06, __u64)	/* argument: pointer to the segid */
#define RMNIC_IOC_ATTACH _IOWR('r', 0x07, struct rmnic_segment_attach)
#define RMNIC_IOC_DETACH _IOW('r', 0x08, __u32)	/* argument: pointer to the slot */

/* ABI 5: the context's fault-ahead window in pages (1..RMNIC_MAX_FAULT_AHEAD; 1: off). */
#define RMNIC_MAX_FAULT_AHEAD 512
#define RMNIC_DEFAULT_FAULT_AHEAD 16
#define RMNIC_IOC_FAULT_AHEAD _IOW('r', 0x09, __u32)	/* argument: pointer to the window */

/*
 * ABI 6 (device 1.5): user-level submission. RMNIC_IOC_USER_QUEUE hands the context's queue
 * to the process; mmap the queue at RMNIC_USER_QUEUE_MMAP_OFFSET (map_length bytes) and the
 * doorbell page at doorbell_offset. Post: command into slot tail % slots, store tail + 1
 * (release), write 32 bits at the doorbell page's offset 0; done when head passes it.
 */
struct rmnic_user_queue {
	__u32 slots;
	__u32 slot_size;
	__u32 completions_offset;
	__u32 indices_offset;	/* __u32 tail at +0, __u32 head at +4 */
	__u64 map_length;
	__u64 doorbell_offset;
};

#define RMNIC_IOC_USER_QUEUE _IOR('r', 0x0a, struct rmnic_user_queue)
#define RMNIC_USER_QUEUE_MMAP_OFFSET 0
#define RMNIC_USER_DOORBELL_MMAP_OFFSET (1 << 20)
#define RMNIC_USER_QUEUE_SLOTS 256
#define RMNIC_USER_SLOT_SIZE 64
#define RMNIC_USER_TAIL_OFFSET 0
#define RMNIC_USER_HEAD_OFFSET 4

/* Sleep until the user queue's head reaches `head` (the driver drains faults meanwhile). */
struct rmnic_user_wait {
	__u32 head;
	__u32 timeout_ms;	/* then EAGAIN; 0: no limit */
};

#define RMNIC_IOC_USER_WAIT _IOW('r', 0x0b, struct rmnic_user_wait)

#endif /* RMNIC_UAPI_H */
