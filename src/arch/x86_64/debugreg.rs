//! TEMP stub
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct DebugRegError;
pub enum HwBreakKind {
    Execute,
    Write,
    ReadWrite,
}
pub struct HwSlot {
    pub addr: u64,
    pub kind: HwBreakKind,
    pub len: u8,
}
pub fn debugreg_array(s: &[Option<HwSlot>; 4]) -> Result<[u64; 8], DebugRegError> {
    let mut r = [0u64; 8];
    if let Some(x) = &s[0] {
        r[0] = x.addr;
        r[7] = 1 | (1 << 16) | (2 << 18) | (3 << 8);
        let _ = (&x.kind, HwBreakKind::Execute, HwBreakKind::ReadWrite);
    }
    Ok(r)
}
