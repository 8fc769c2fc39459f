//! The host terminal: raw mode while the guest owns the console, restored on every way out.

use std::io::IsTerminal;

/// Puts stdin in raw mode (if it is a terminal) and restores it when dropped.
pub struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    pub fn enter() -> RawTerminal {
        if !std::io::stdin().is_terminal() {
            return RawTerminal { saved: None };
        }
        let mut t = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr fills the termios struct for fd 0 or fails without touching it.
        if unsafe { libc::tcgetattr(0, t.as_mut_ptr()) } != 0 {
            return RawTerminal { saved: None };
        }
        // SAFETY: tcgetattr succeeded, so the struct is initialised.
        let saved = unsafe { t.assume_init() };
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct we own.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so the host's own log lines still start at column 0.
        raw.c_oflag |= libc::OPOST;
        // SAFETY: applies a termios derived from the current one to fd 0.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) };
        RawTerminal { saved: Some(saved) }
    }

    /// Whether stdin is a terminal in raw mode (so escape sequences are meaningful).
    pub fn is_raw(&self) -> bool {
        self.saved.is_some()
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restores the attributes read in `enter` on the same fd.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, saved) };
        }
    }
}
