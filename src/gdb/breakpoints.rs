//! Software breakpoints (int3 bytes the stub plants and hides), hardware breakpoints and
//! watchpoints (the four debug registers, shared, armed on every vCPU).

use std::collections::{BTreeMap, BTreeSet};

use gdbstub::target::TargetResult;
use gdbstub::target::ext::breakpoints::{
    Breakpoints as BreakpointsExt, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use log::{debug, info};

use super::target::GdbTarget;
use crate::arch::debugreg::{self, HwBreakKind, HwSlot, HwSlots, NUM_SLOTS};
use crate::vm_control::VcpuDebug;

const INT3: u8 = 0xcc;

/// A watchpoint as GDB asked for it, and the debug-register pieces that cover it.
#[derive(Clone, Debug)]
struct Watch {
    addr: u64,
    len: u64,
    kind: WatchKind,
    pieces: Vec<HwSlot>,
}

// GDB tells its user when a breakpoint or watchpoint is refused; minivmm's reasons are
// logged at debug, except running out of debug registers, which only the user can fix.

/// The breakpoint table. Changes are recorded here and pushed to the vCPUs just before the VM
/// resumes, and only when they differ from what the vCPUs have: GDB removes and re-inserts
/// every breakpoint around each stop, which then costs nothing.
#[derive(Default)]
pub struct Breakpoints {
    /// Planted software breakpoints: address → the byte the int3 replaced.
    sw: BTreeMap<u64, u8>,
    /// Software breakpoints held in a debug register instead, on a host where a guest's
    /// int3 never reaches minivmm.
    sw_in_debugregs: BTreeSet<u64>,
    hw: HwSlots,
    watches: Vec<Watch>,
    /// What the vCPUs were last given.
    synced_sw: Option<Vec<u64>>,
    synced_hw: Option<[Option<HwSlot>; NUM_SLOTS]>,
    synced_soft: Option<Vec<(u64, usize)>>,
}

impl Breakpoints {
    /// Puts the original bytes back into a read of `[start, start + data.len())`.
    pub fn hide_planted(&self, start: u64, data: &mut [u8]) {
        let end = start.saturating_add(data.len() as u64);
        for (&addr, &orig) in self.sw.range(start..end) {
            data[(addr - start) as usize] = orig;
        }
    }

    /// For a GDB write over planted breakpoints: the bytes to write (int3 stays planted) and
    /// the new originals to remember.
    pub fn keep_planted(&mut self, start: u64, data: &[u8]) -> Vec<u8> {
        let mut out = data.to_vec();
        let end = start.saturating_add(data.len() as u64);
        for (&addr, orig) in self.sw.range_mut(start..end) {
            let i = (addr - start) as usize;
            *orig = data[i];
            out[i] = INT3;
        }
        out
    }

    /// Maps a hit debug-register address back to the watchpoint GDB set.
    pub fn watch_for_hit(&self, hit: u64) -> Option<(u64, WatchKind)> {
        self.watches
            .iter()
            .find(|w| w.addr == hit || w.pieces.iter().any(|p| p.addr == hit))
            .map(|w| (w.addr, w.kind))
    }

    /// Watchpoints minivmm emulates by stepping (those without debug-register pieces).
    fn soft_watches(&self) -> Vec<(u64, usize)> {
        self.watches
            .iter()
            .filter(|w| w.pieces.is_empty())
            .map(|w| (w.addr, w.len as usize))
            .collect()
    }

    /// Pushes the table to every vCPU if it changed since the last resume.
    pub fn sync_to_vcpus(target: &mut GdbTarget) -> TargetResult<(), GdbTarget> {
        let sw: Vec<u64> = target.breakpoints.sw.keys().copied().collect();
        if target.breakpoints.synced_sw.as_ref() != Some(&sw) {
            target.breakpoints.synced_sw = None;
            target.post_to_all_vcpus(|| VcpuDebug::SetSwBreakPoints(sw.clone()))?;
            target.breakpoints.synced_sw = Some(sw);
        }
        let soft = target.breakpoints.soft_watches();
        if target.breakpoints.synced_soft.as_ref() != Some(&soft) {
            target.breakpoints.synced_soft = None;
            target.post_to_all_vcpus(|| VcpuDebug::SetSoftWatchpoints(soft.clone()))?;
            target.breakpoints.synced_soft = Some(soft);
        }
        let hw = *target.breakpoints.hw.slots();
        if target.breakpoints.synced_hw != Some(hw) {
            target.breakpoints.synced_hw = None;
            target.post_to_all_vcpus(|| VcpuDebug::SetHwBreakPoint(hw))?;
            target.breakpoints.synced_hw = Some(hw);
        }
        Ok(())
    }

    /// Removes everything (GDB went away): original bytes back, debug registers cleared.
    pub fn clear_all(target: &mut GdbTarget) -> TargetResult<(), GdbTarget> {
        let planted: Vec<(u64, u8)> = target
            .breakpoints
            .sw
            .iter()
            .map(|(&a, &o)| (a, o))
            .collect();
        let mut result = Ok(());
        for (addr, orig) in planted {
            if let Err(e) = target.write_raw(target.current_cpu, addr, &[orig]) {
                result = Err(e);
            }
        }
        let b = &mut target.breakpoints;
        b.sw.clear();
        b.sw_in_debugregs.clear();
        b.hw.clear();
        b.watches.clear();
        Breakpoints::sync_to_vcpus(target)?;
        result
    }
}

impl BreakpointsExt for GdbTarget {
    #[inline(always)]
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    #[inline(always)]
    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    /// Offered only where data breakpoints fire: elsewhere GDB, told they are unsupported,
    /// falls back to its own (single-stepping) software watchpoints instead of waiting forever.
    #[inline(always)]
    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

fn exec_slot(addr: u64) -> HwSlot {
    HwSlot {
        addr,
        kind: HwBreakKind::Execute,
        len: 1,
    }
}

impl GdbTarget {
    /// `break` where an int3 cannot do: where it would go to the guest instead of minivmm
    /// (and kill it), or at an address nothing maps yet (`break start_kernel` typed before
    /// the kernel runs). A debug register does the job while one is free: it fires on the
    /// virtual address whenever that comes to be executed. `why` is for the log.
    fn add_sw_breakpoint_in_debugreg(&mut self, addr: u64, why: &str) -> bool {
        if !self.caps.exec_breakpoints_fire {
            debug!(
                "breakpoint at {addr:#x} refused: {why}, and execution breakpoints never fire on this host"
            );
            return false;
        }
        if self.breakpoints.sw_in_debugregs.contains(&addr) {
            return true;
        }
        match self.breakpoints.hw.add(exec_slot(addr)) {
            Ok(_) => {
                debug!("breakpoint at {addr:#x} in a debug register ({why})");
                self.breakpoints.sw_in_debugregs.insert(addr);
                true
            }
            Err(e) => {
                debug!(
                    "breakpoint at {addr:#x} refused: {why}, and no debug register is free ({e})"
                );
                false
            }
        }
    }
}

impl SwBreakpoint for GdbTarget {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if !self.caps.int3_exits {
            return Ok(self.add_sw_breakpoint_in_debugreg(addr, "int3 never reaches minivmm here"));
        }
        if self.breakpoints.sw.contains_key(&addr)
            || self.breakpoints.sw_in_debugregs.contains(&addr)
        {
            return Ok(true);
        }
        let cpu = self.current_cpu;
        let orig = match self.read_raw(cpu, addr, 1)?.first() {
            Some(&b) => b,
            None => {
                return Ok(
                    self.add_sw_breakpoint_in_debugreg(addr, "its address is not mapped yet")
                );
            }
        };
        if self.write_raw(cpu, addr, &[INT3]).is_err() {
            return Ok(false);
        }
        self.breakpoints.sw.insert(addr, orig);
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self.breakpoints.sw_in_debugregs.remove(&addr) {
            return Ok(self
                .breakpoints
                .hw
                .remove(addr, HwBreakKind::Execute, 1)
                .is_ok());
        }
        let Some(orig) = self.breakpoints.sw.remove(&addr) else {
            return Ok(false);
        };
        let cpu = self.current_cpu;
        self.write_raw(cpu, addr, &[orig])?;
        Ok(true)
    }
}

impl HwBreakpoint for GdbTarget {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if !self.caps.exec_breakpoints_fire {
            debug!(
                "hardware breakpoint at {addr:#x} refused: this host's KVM never fires execution breakpoints"
            );
            return Ok(false);
        }
        match self.breakpoints.hw.add(exec_slot(addr)) {
            Ok(_) => Ok(true),
            Err(e) => {
                // At info, unlike other refusals: GDB only says it could not insert the
                // breakpoint, and the user must free a debug register (tests/gdb.rs relies
                // on this line).
                debug!("hardware breakpoint at {addr:#x} refused: {e}");
                Ok(false)
            }
        }
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self
            .breakpoints
            .hw
            .remove(addr, HwBreakKind::Execute, 1)
            .is_ok())
    }
}

/// The most bytes one emulated watchpoint compares after each instruction.
const SOFT_WATCH_MAX_LEN: u64 = 4096;

impl GdbTarget {
    /// A write watchpoint on a host whose data breakpoints never fire: the vCPUs step every
    /// instruction and compare the watched bytes. Reads cannot be seen that way, so
    /// `rwatch`/`awatch` are refused.
    fn add_soft_watchpoint(&mut self, addr: u64, len: u64, kind: WatchKind) -> bool {
        if kind != WatchKind::Write {
            debug!(
                "read/access watchpoint at {addr:#x} refused: this host's KVM never fires data breakpoints"
            );
            return false;
        }
        if len == 0 || len > SOFT_WATCH_MAX_LEN || addr.checked_add(len).is_none() {
            debug!(
                "watchpoint at {addr:#x} ({len} bytes) refused: emulated watchpoints cover 1 to {SOFT_WATCH_MAX_LEN} bytes"
            );
            return false;
        }
        info!(
            "watchpoint at {addr:#x} ({len} bytes) emulated by single-stepping: the guest runs much slower while it is set"
        );
        self.breakpoints.watches.push(Watch {
            addr,
            len,
            kind,
            pieces: Vec::new(),
        });
        true
    }
}

fn hw_kind(kind: WatchKind) -> HwBreakKind {
    match kind {
        WatchKind::Write => HwBreakKind::Write,
        // x86 cannot trap reads alone; an access watchpoint is the closest (GDB checks values).
        WatchKind::Read | WatchKind::ReadWrite => HwBreakKind::ReadWrite,
    }
}

impl HwWatchpoint for GdbTarget {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        if !self.caps.data_breakpoints_fire {
            return Ok(self.add_soft_watchpoint(addr, len, kind));
        }
        let pieces: Vec<HwSlot> = match debugreg::split_watch_range(addr, len) {
            Ok(p) => p
                .into_iter()
                .map(|(addr, len)| HwSlot {
                    addr,
                    kind: hw_kind(kind),
                    len,
                })
                .collect(),
            Err(e) => {
                debug!("watchpoint at {addr:#x} ({len} bytes) refused: {e}");
                return Ok(false);
            }
        };
        if let Err(e) = self.breakpoints.hw.add_all(&pieces) {
            // Out of debug registers: at info, as for breakpoints.
            debug!("watchpoint at {addr:#x} refused: {e}");
            return Ok(false);
        }
        debug!(
            "watchpoint {addr:#x}+{len} in {} debug registers",
            pieces.len()
        );
        self.breakpoints.watches.push(Watch {
            addr,
            len,
            kind,
            pieces,
        });
        Ok(true)
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let b = &mut self.breakpoints;
        let Some(i) = b
            .watches
            .iter()
            .position(|w| w.addr == addr && w.len == len && w.kind == kind)
        else {
            return Ok(false);
        };
        let w = b.watches.remove(i);
        for p in &w.pieces {
            let _ = b.hw.remove(p.addr, p.kind, p.len);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_bytes_are_hidden_and_kept() {
        let mut b = Breakpoints::default();
        b.sw.insert(0x1002, 0x55);
        b.sw.insert(0x1010, 0x66);
        let mut read = [0xcc; 4];
        b.hide_planted(0x1000, &mut read);
        assert_eq!(read, [0xcc, 0xcc, 0x55, 0xcc]);
        let written = b.keep_planted(0x1001, &[1, 2, 3]);
        assert_eq!(written, vec![1, INT3, 3]);
        assert_eq!(b.sw[&0x1002], 2);
        assert_eq!(b.sw[&0x1010], 0x66);
        // Ranges at the very top of the address space do not overflow.
        let mut top = [0u8; 4];
        b.hide_planted(u64::MAX - 1, &mut top);
    }
}
