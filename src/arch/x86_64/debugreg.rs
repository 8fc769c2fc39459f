//! x86 debug-register encoding for hardware breakpoints and watchpoints.
//!
//! The four address registers DR0-DR3 each hold one breakpoint; DR7 enables them and
//! sets what access (R/W field) and how many bytes (LEN field) each one matches
//! (Intel SDM vol. 3, "Debug Registers"). KVM takes the values through
//! `kvm_guest_debug_arch.debugreg` and reports hits through DR6.

use thiserror::Error;

/// Number of hardware breakpoint slots (DR0-DR3).
pub const NUM_SLOTS: usize = 4;

/// DR6 bit set when a single-step trap caused the debug exception.
pub const DR6_BS: u64 = 1 << 14;

/// DR7 LE and GE: exact data-breakpoint matching, recommended whenever data
/// breakpoints are in use.
const DR7_LE: u64 = 1 << 8;
const DR7_GE: u64 = 1 << 9;
/// DR7 bit 10 always reads as 1.
const DR7_RESERVED_ONE: u64 = 1 << 10;
/// First bit of slot 0's R/W field; each slot's R/W and LEN take 4 bits.
const DR7_CONTROL_SHIFT: u32 = 16;

/// What kind of access a hardware breakpoint matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HwBreakKind {
    /// Instruction fetch (R/W = 00).
    Execute,
    /// Data write (R/W = 01).
    Write,
    /// Data read or write (R/W = 11); x86 cannot trap on reads alone.
    ReadWrite,
}

impl HwBreakKind {
    /// The DR7 R/W field value; I/O breakpoints (10) are not supported.
    fn rw_bits(self) -> u64 {
        match self {
            HwBreakKind::Execute => 0b00,
            HwBreakKind::Write => 0b01,
            HwBreakKind::ReadWrite => 0b11,
        }
    }
}

/// One hardware breakpoint or watchpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HwSlot {
    /// Linear (guest-virtual) address to match.
    pub addr: u64,
    /// Access to match.
    pub kind: HwBreakKind,
    /// Bytes covered: 1, 2, 4 or 8 (always 1 for `Execute`).
    pub len: u8,
}

/// Errors from validating or allocating hardware breakpoints.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DebugRegError {
    /// The length is not one the LEN field can express.
    #[error("hardware breakpoint length {len} is not 1, 2, 4 or 8 bytes")]
    InvalidLength {
        /// The requested length.
        len: u64,
    },
    /// Instruction breakpoints must use LEN = 00 (one byte).
    #[error("execute breakpoint at {addr:#x} has length {len}; it must be 1")]
    ExecuteLength {
        /// The breakpoint address.
        addr: u64,
        /// The requested length.
        len: u8,
    },
    /// Data breakpoints ignore the low address bits, so they must be aligned.
    #[error("data breakpoint at {addr:#x} is not aligned to its length {len}")]
    Misaligned {
        /// The breakpoint address.
        addr: u64,
        /// The requested length.
        len: u8,
    },
    /// All four debug address registers are in use.
    #[error("all {NUM_SLOTS} hardware breakpoint slots are in use")]
    NoFreeSlot,
    /// Not enough free debug address registers for a multi-slot request.
    #[error("{needed} hardware breakpoint slots are needed but only {free} are free")]
    NotEnoughSlots {
        /// Slots the request needs.
        needed: usize,
        /// Slots currently free.
        free: usize,
    },
    /// Removal of a breakpoint that is not set.
    #[error("no {kind:?} hardware breakpoint of length {len} is set at {addr:#x}")]
    NotFound {
        /// The breakpoint address.
        addr: u64,
        /// The access kind.
        kind: HwBreakKind,
        /// The length.
        len: u8,
    },
    /// A watch range that needs more aligned pieces than there are slots.
    #[error(
        "watching {len} bytes at {addr:#x} needs more aligned 1/2/4/8-byte pieces than the {NUM_SLOTS} debug registers"
    )]
    RangeTooLarge {
        /// Start of the range.
        addr: u64,
        /// Length of the range.
        len: u64,
    },
    /// A watch range that is empty or runs past the top of the address space.
    #[error("cannot watch {len} bytes at {addr:#x}: the range is empty or wraps around")]
    InvalidRange {
        /// Start of the range.
        addr: u64,
        /// Length of the range.
        len: u64,
    },
}

/// Checks that `slot` can be expressed in the debug registers.
pub fn validate(slot: &HwSlot) -> Result<(), DebugRegError> {
    if !matches!(slot.len, 1 | 2 | 4 | 8) {
        return Err(DebugRegError::InvalidLength {
            len: slot.len.into(),
        });
    }
    match slot.kind {
        HwBreakKind::Execute if slot.len != 1 => Err(DebugRegError::ExecuteLength {
            addr: slot.addr,
            len: slot.len,
        }),
        HwBreakKind::Execute => Ok(()),
        HwBreakKind::Write | HwBreakKind::ReadWrite => {
            if !slot.addr.is_multiple_of(u64::from(slot.len)) {
                Err(DebugRegError::Misaligned {
                    addr: slot.addr,
                    len: slot.len,
                })
            } else {
                Ok(())
            }
        }
    }
}

/// The DR7 LEN field value for a validated length.
fn len_bits(len: u8) -> u64 {
    // The encoding is not monotonic: 8 bytes is 10 and 4 bytes is 11.
    match len {
        2 => 0b01,
        8 => 0b10,
        4 => 0b11,
        _ => 0b00,
    }
}

/// Builds DR7 for the given slots: local enable (L0-L3), R/W and LEN per used slot,
/// plus LE/GE and the reserved-one bit 10.
pub fn encode_dr7(slots: &[Option<HwSlot>; NUM_SLOTS]) -> Result<u64, DebugRegError> {
    let mut dr7 = DR7_RESERVED_ONE;
    for (i, slot) in slots.iter().enumerate() {
        let Some(slot) = slot else { continue };
        validate(slot)?;
        let i = i as u32;
        dr7 |= 1 << (2 * i);
        let control = slot.kind.rw_bits() | (len_bits(slot.len) << 2);
        dr7 |= control << (DR7_CONTROL_SHIFT + 4 * i);
    }
    if dr7 != DR7_RESERVED_ONE {
        dr7 |= DR7_LE | DR7_GE;
    }
    Ok(dr7)
}

/// The `kvm_guest_debug_arch.debugreg` array: DR0-DR3 addresses in `[0..4]`, DR7 in
/// `[7]`; DR4-DR6 are zero.
pub fn debugreg_array(slots: &[Option<HwSlot>; NUM_SLOTS]) -> Result<[u64; 8], DebugRegError> {
    let mut regs = [0u64; 8];
    for (reg, slot) in regs.iter_mut().zip(slots) {
        if let Some(slot) = slot {
            *reg = slot.addr;
        }
    }
    regs[7] = encode_dr7(slots)?;
    Ok(regs)
}

/// Indices of the slots whose B0-B3 bits are set in `dr6`.
pub fn triggered_slots(dr6: u64) -> impl Iterator<Item = usize> {
    (0..NUM_SLOTS).filter(move |i| dr6 & (1 << i) != 0)
}

/// Splits a watch range of any length into naturally aligned 1, 2, 4 and 8-byte
/// pieces, as `(address, length)` pairs in address order.
pub fn split_watch_range(addr: u64, len: u64) -> Result<Vec<(u64, u8)>, DebugRegError> {
    if len == 0 || addr.checked_add(len - 1).is_none() {
        return Err(DebugRegError::InvalidRange { addr, len });
    }
    let mut pieces = Vec::with_capacity(NUM_SLOTS);
    let mut cur = addr;
    let mut left = len;
    while left > 0 {
        if pieces.len() == NUM_SLOTS {
            return Err(DebugRegError::RangeTooLarge { addr, len });
        }
        // The largest piece that is aligned at `cur` and does not overshoot the end;
        // 1 always qualifies.
        let size = [8u8, 4, 2]
            .into_iter()
            .find(|&s| cur.is_multiple_of(u64::from(s)) && u64::from(s) <= left)
            .unwrap_or(1);
        pieces.push((cur, size));
        left -= u64::from(size);
        // Only the step past the final piece can wrap, and then `left` is 0.
        cur = cur.wrapping_add(u64::from(size));
    }
    Ok(pieces)
}

/// The four debug-register slots, shared by hardware breakpoints and watchpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HwSlots {
    slots: [Option<HwSlot>; NUM_SLOTS],
}

impl HwSlots {
    /// An allocator with all slots free.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `slot` in the lowest free register and returns its index. Adding an
    /// identical slot twice uses two registers, so that two independent GDB
    /// requests can each be removed once.
    pub fn add(&mut self, slot: HwSlot) -> Result<usize, DebugRegError> {
        validate(&slot)?;
        let (index, free) = self
            .slots
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.is_none())
            .ok_or(DebugRegError::NoFreeSlot)?;
        *free = Some(slot);
        Ok(index)
    }

    /// Adds all of `slots` or, if any is invalid or they do not all fit, none of them.
    pub fn add_all(&mut self, slots: &[HwSlot]) -> Result<Vec<usize>, DebugRegError> {
        for slot in slots {
            validate(slot)?;
        }
        let free = self.slots.iter().filter(|s| s.is_none()).count();
        if slots.len() > free {
            return Err(DebugRegError::NotEnoughSlots {
                needed: slots.len(),
                free,
            });
        }
        slots.iter().map(|slot| self.add(*slot)).collect()
    }

    /// Frees the register holding exactly (`addr`, `kind`, `len`) and returns its index.
    pub fn remove(
        &mut self,
        addr: u64,
        kind: HwBreakKind,
        len: u8,
    ) -> Result<usize, DebugRegError> {
        let wanted = HwSlot { addr, kind, len };
        let (index, slot) = self
            .slots
            .iter_mut()
            .enumerate()
            .find(|(_, s)| **s == Some(wanted))
            .ok_or(DebugRegError::NotFound { addr, kind, len })?;
        *slot = None;
        Ok(index)
    }

    /// The current register assignment, ready for [`encode_dr7`] or [`debugreg_array`].
    pub fn slots(&self) -> &[Option<HwSlot>; NUM_SLOTS] {
        &self.slots
    }

    /// Whether no slot is in use (so guest debugging can drop hardware breakpoints).
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// Frees every slot.
    pub fn clear(&mut self) {
        self.slots = [None; NUM_SLOTS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(addr: u64, kind: HwBreakKind, len: u8) -> HwSlot {
        HwSlot { addr, kind, len }
    }

    fn only(i: usize, s: HwSlot) -> [Option<HwSlot>; NUM_SLOTS] {
        let mut slots = [None; NUM_SLOTS];
        slots[i] = Some(s);
        slots
    }

    #[test]
    fn no_slots_leave_only_the_reserved_bit() {
        assert_eq!(encode_dr7(&[None; NUM_SLOTS]), Ok(0x400));
    }

    #[test]
    fn every_slot_kind_and_length_encodes_to_its_fields() {
        let kinds = [
            (HwBreakKind::Execute, 0b00),
            (HwBreakKind::Write, 0b01),
            (HwBreakKind::ReadWrite, 0b11),
        ];
        let lens = [(1u8, 0b00u64), (2, 0b01), (4, 0b11), (8, 0b10)];
        for i in 0..NUM_SLOTS {
            for (kind, rw) in kinds {
                for (len, len_field) in lens {
                    if kind == HwBreakKind::Execute && len != 1 {
                        continue;
                    }
                    let dr7 = encode_dr7(&only(i, slot(0x1000, kind, len))).unwrap();
                    // Enable bits: only Li, never Gi.
                    assert_eq!(dr7 & 0xff, 1 << (2 * i), "slot {i}");
                    assert_eq!(dr7 & 0x700, 0x700, "LE, GE and bit 10");
                    let shift = 16 + 4 * i;
                    assert_eq!((dr7 >> shift) & 0b11, rw, "R/W of slot {i} {kind:?}");
                    assert_eq!(
                        (dr7 >> (shift + 2)) & 0b11,
                        len_field,
                        "LEN of slot {i} len {len}"
                    );
                    // Nothing outside the slot's own fields.
                    let own = 0x7ff | (0xf << shift);
                    assert_eq!(dr7 & !own, 0, "stray bits for slot {i}");
                }
            }
        }
    }

    #[test]
    fn dr7_matches_hand_computed_sdm_layout() {
        let slots = [
            Some(slot(0xffff_ffff_8100_0000, HwBreakKind::Execute, 1)),
            Some(slot(0x2000, HwBreakKind::Write, 4)),
            None,
            Some(slot(0x3008, HwBreakKind::ReadWrite, 8)),
        ];
        // L0 | L1 | L3 = 0x45; LE | GE | bit 10 = 0x700.
        // Slot 0: R/W 00 LEN 00 -> bits 19:16 = 0x0.
        // Slot 1: R/W 01 LEN 11 -> bits 23:20 = 0xd.
        // Slot 3: R/W 11 LEN 10 -> bits 31:28 = 0xb.
        let expected = 0xb0d0_0745;
        assert_eq!(encode_dr7(&slots), Ok(expected));
        assert_eq!(
            debugreg_array(&slots),
            Ok([0xffff_ffff_8100_0000, 0x2000, 0, 0x3008, 0, 0, 0, expected])
        );
    }

    #[test]
    fn invalid_slots_are_rejected() {
        for len in [0u8, 3, 5, 16] {
            assert_eq!(
                validate(&slot(0x1000, HwBreakKind::Write, len)),
                Err(DebugRegError::InvalidLength { len: len.into() })
            );
        }
        assert_eq!(
            validate(&slot(0x1000, HwBreakKind::Execute, 4)),
            Err(DebugRegError::ExecuteLength {
                addr: 0x1000,
                len: 4
            })
        );
        for (addr, len) in [(0x1001, 2u8), (0x1002, 4), (0x1004, 8), (0x1003, 8)] {
            for kind in [HwBreakKind::Write, HwBreakKind::ReadWrite] {
                assert_eq!(
                    validate(&slot(addr, kind, len)),
                    Err(DebugRegError::Misaligned { addr, len })
                );
            }
        }
        // Instruction breakpoints may sit on any byte.
        assert_eq!(validate(&slot(0x1003, HwBreakKind::Execute, 1)), Ok(()));
        assert_eq!(validate(&slot(0x1008, HwBreakKind::ReadWrite, 8)), Ok(()));
        // encode_dr7 validates too.
        assert!(encode_dr7(&only(2, slot(0x1001, HwBreakKind::Write, 4))).is_err());
        assert!(debugreg_array(&only(2, slot(0x1001, HwBreakKind::Write, 4))).is_err());
    }

    #[test]
    fn dr6_decoding() {
        assert_eq!(triggered_slots(0).count(), 0);
        assert_eq!(triggered_slots(0b0101).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(
            triggered_slots(0b1000 | DR6_BS | 0xffff_0ff0).collect::<Vec<_>>(),
            [3]
        );
        assert_eq!(triggered_slots(0xf).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(DR6_BS, 0x4000);
    }

    #[test]
    fn allocator_fills_reuses_and_exhausts_slots() {
        let mut hw = HwSlots::new();
        assert!(hw.is_empty());
        let a = slot(0x1000, HwBreakKind::Execute, 1);
        let b = slot(0x2000, HwBreakKind::Write, 8);
        let c = slot(0x3000, HwBreakKind::ReadWrite, 4);
        assert_eq!(hw.add(a), Ok(0));
        assert_eq!(hw.add(b), Ok(1));
        assert_eq!(hw.add(c), Ok(2));
        assert_eq!(hw.add(a), Ok(3), "a duplicate takes its own slot");
        assert!(!hw.is_empty());
        assert_eq!(
            hw.add(slot(0x4000, HwBreakKind::Write, 1)),
            Err(DebugRegError::NoFreeSlot)
        );

        assert_eq!(hw.remove(0x2000, HwBreakKind::Write, 8), Ok(1));
        assert_eq!(hw.slots()[1], None);
        // The freed slot is reused first.
        assert_eq!(hw.add(c), Ok(1));
        // Each duplicate is removed once.
        assert_eq!(hw.remove(0x1000, HwBreakKind::Execute, 1), Ok(0));
        assert_eq!(hw.remove(0x1000, HwBreakKind::Execute, 1), Ok(3));
        assert_eq!(hw.slots(), &[None, Some(c), Some(c), None]);

        hw.clear();
        assert!(hw.is_empty());
        // Invalid slots never take a register.
        assert!(hw.add(slot(0x1001, HwBreakKind::Write, 2)).is_err());
        assert!(hw.is_empty());
    }

    #[test]
    fn removing_a_missing_slot_is_an_error() {
        let mut hw = HwSlots::new();
        hw.add(slot(0x2000, HwBreakKind::Write, 4)).unwrap();
        // Same address, different kind or length, is a different breakpoint.
        assert_eq!(
            hw.remove(0x2000, HwBreakKind::ReadWrite, 4),
            Err(DebugRegError::NotFound {
                addr: 0x2000,
                kind: HwBreakKind::ReadWrite,
                len: 4
            })
        );
        assert!(hw.remove(0x2000, HwBreakKind::Write, 2).is_err());
        assert!(hw.remove(0x3000, HwBreakKind::Write, 4).is_err());
        assert_eq!(hw.remove(0x2000, HwBreakKind::Write, 4), Ok(0));
    }

    #[test]
    fn add_all_is_all_or_nothing() {
        let mut hw = HwSlots::new();
        hw.add(slot(0x10, HwBreakKind::Execute, 1)).unwrap();
        let pieces: Vec<_> = split_watch_range(0x1003, 6)
            .unwrap()
            .into_iter()
            .map(|(addr, len)| slot(addr, HwBreakKind::Write, len))
            .collect();
        assert_eq!(hw.add_all(&pieces), Ok(vec![1, 2, 3]));
        let before = hw.clone();
        assert_eq!(
            hw.add_all(&[slot(0x20, HwBreakKind::Write, 1)]),
            Err(DebugRegError::NotEnoughSlots { needed: 1, free: 0 })
        );
        hw.remove(0x10, HwBreakKind::Execute, 1).unwrap();
        let two = [
            slot(0x20, HwBreakKind::Write, 1),
            slot(0x21, HwBreakKind::Write, 1),
        ];
        assert!(hw.add_all(&two).is_err());
        assert_eq!(&hw.slots()[1..], &before.slots()[1..]);
        assert_eq!(hw.slots()[0], None);
    }

    #[test]
    fn watch_ranges_split_into_aligned_pieces() {
        assert_eq!(
            split_watch_range(0x1003, 6),
            Ok(vec![(0x1003, 1), (0x1004, 4), (0x1008, 1)])
        );
        assert_eq!(split_watch_range(0x1000, 8), Ok(vec![(0x1000, 8)]));
        assert_eq!(
            split_watch_range(0x1000, 32),
            Ok(vec![(0x1000, 8), (0x1008, 8), (0x1010, 8), (0x1018, 8)])
        );
        assert_eq!(
            split_watch_range(0x1001, 7),
            Ok(vec![(0x1001, 1), (0x1002, 2), (0x1004, 4)])
        );
        assert_eq!(
            split_watch_range(0x1006, 4),
            Ok(vec![(0x1006, 2), (0x1008, 2)])
        );
        assert_eq!(split_watch_range(0x1005, 1), Ok(vec![(0x1005, 1)]));
        // The last byte of the address space can be watched.
        assert_eq!(
            split_watch_range(u64::MAX - 7, 8),
            Ok(vec![(u64::MAX - 7, 8)])
        );
        assert_eq!(split_watch_range(u64::MAX, 1), Ok(vec![(u64::MAX, 1)]));
        // Every piece is naturally aligned and the pieces tile the range.
        for addr in 0x2000..0x2010u64 {
            for len in 1..=16u64 {
                if let Ok(pieces) = split_watch_range(addr, len) {
                    let mut next = addr;
                    for (a, l) in pieces {
                        assert_eq!(a, next);
                        assert_eq!(a % u64::from(l), 0);
                        next = a + u64::from(l);
                    }
                    assert_eq!(next, addr + len);
                }
            }
        }
    }

    #[test]
    fn watch_ranges_that_cannot_be_covered_are_rejected() {
        assert_eq!(
            split_watch_range(0x1000, 33),
            Err(DebugRegError::RangeTooLarge {
                addr: 0x1000,
                len: 33
            })
        );
        // 1 + 2 + 4 + 8 + 1: five pieces for 16 bytes when misaligned.
        assert_eq!(
            split_watch_range(0x1001, 16),
            Err(DebugRegError::RangeTooLarge {
                addr: 0x1001,
                len: 16
            })
        );
        assert!(matches!(
            split_watch_range(0, u64::MAX),
            Err(DebugRegError::RangeTooLarge { .. })
        ));
        assert_eq!(
            split_watch_range(0x1000, 0),
            Err(DebugRegError::InvalidRange {
                addr: 0x1000,
                len: 0
            })
        );
        assert_eq!(
            split_watch_range(u64::MAX, 2),
            Err(DebugRegError::InvalidRange {
                addr: u64::MAX,
                len: 2
            })
        );
    }
}
