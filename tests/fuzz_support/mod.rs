//! The fuzzing engine behind `tests/fuzz.rs`: a seeded PRNG, a time-budgeted driver that
//! catches panics and hangs, and byte-level mutators. Stable Rust only (no libFuzzer): the
//! harnesses are coverage-free but structure-aware, starting from real inputs.
//!
//! Environment:
//! - `MINIVMM_FUZZ_SECS` (default 60, a minute as CI runs it): seconds per target.
//! - `MINIVMM_FUZZ_SEED` (decimal or 0x-hex): the first case's seed; case `i` uses
//!   `seed + i`, so the seed a failure prints replays that exact case first.
//! - `MINIVMM_FUZZ_CASES`: stop after this many cases (1 replays just the failing one).

pub mod fake_vm;

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// splitmix64: tiny, fast, and every seed gives a good stream.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut r = Rng(seed ^ 0x6a09_e667_f3bc_c908);
        r.next();
        r
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True with probability `num`/`den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    /// Fewer than `max` random bytes.
    pub fn bytes_upto(&mut self, max: usize) -> Vec<u8> {
        let n = self.index(max);
        self.bytes(n)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// An integer drawn to hit boundaries: interesting constants, small values, powers of
    /// two and their neighbours, or anything.
    pub fn interesting_u64(&mut self) -> u64 {
        match self.below(6) {
            0 => *self.pick(INTERESTING),
            1 => self.below(0x100),
            2 => {
                let p = 1u64 << self.below(64);
                match self.below(3) {
                    0 => p,
                    1 => p.wrapping_sub(1),
                    _ => p.wrapping_add(1),
                }
            }
            3 => u64::MAX - self.below(0x100),
            _ => self.next(),
        }
    }
}

/// Values that tend to break length and address arithmetic.
pub const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    4,
    7,
    8,
    0x10,
    0x1f,
    0x20,
    0x3f,
    0x40,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x1ff,
    0x200,
    0x3ff,
    0xfff,
    0x1000,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0xf_ffff,
    0x10_0000,
    0x20_0000,
    0x100_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
];

const INTERESTING_BYTES: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, 0xfe, 0x20, 0x40, 0x10];

/// Where the integration test's target directory is (`target/` unless redirected).
fn crash_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|p| p.join("fuzz-crashes"))
        .unwrap_or_else(|| PathBuf::from("target/fuzz-crashes"))
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// The time budget per target.
pub fn budget() -> Duration {
    let secs = std::env::var("MINIVMM_FUZZ_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(60.0);
    Duration::from_secs_f64(secs)
}

fn base_seed() -> u64 {
    env_u64("MINIVMM_FUZZ_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng::new(t ^ u64::from(std::process::id()) << 32).next()
    })
}

fn panic_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic)".into()
    }
}

/// One fuzz target: how to make a case from a seed, how to save it, how to run it.
pub struct Target<C> {
    pub name: &'static str,
    /// A case running longer than this is a hang.
    pub hang_after: Duration,
    pub generate: fn(&mut Rng) -> C,
    /// The case as a file, for `target/fuzz-crashes/`.
    pub to_bytes: fn(&C) -> Vec<u8>,
    /// Runs a case; panics (assertions included) are failures.
    pub run: fn(&C),
}

/// Runs `t` for the time budget. Returns the number of cases run; fails the test (with the
/// case's seed, and its input saved) on a panic or a hang.
pub fn fuzz<C: 'static>(t: Target<C>) -> u64 {
    let budget = budget();
    let base = base_seed();
    let max_cases = env_u64("MINIVMM_FUZZ_CASES").unwrap_or(u64::MAX);
    eprintln!(
        "fuzz {}: seed {base:#x}, {:.1} s (MINIVMM_FUZZ_SEED={base:#x} replays this run)",
        t.name,
        budget.as_secs_f64()
    );
    let start = Instant::now();
    // The running case: its seed and when it started (ms since `start`), for the watchdog.
    let current = Arc::new(Mutex::new((base, Duration::ZERO)));
    let done = Arc::new(AtomicBool::new(false));
    let (name, generate, run, to_bytes) = (t.name, t.generate, t.run, t.to_bytes);
    let worker = {
        let (current, done) = (current.clone(), done.clone());
        std::thread::Builder::new()
            .name(format!("fuzz-{name}"))
            .spawn(move || -> Result<u64, (u64, String)> {
                let mut n = 0u64;
                let result = loop {
                    if n >= max_cases || (n > 0 && start.elapsed() >= budget) {
                        break Ok(n);
                    }
                    let seed = base.wrapping_add(n);
                    *current.lock().unwrap_or_else(|e| e.into_inner()) = (seed, start.elapsed());
                    let case = generate(&mut Rng::new(seed));
                    if let Err(p) = catch_unwind(AssertUnwindSafe(|| run(&case))) {
                        break Err((seed, panic_text(&*p)));
                    }
                    n += 1;
                };
                done.store(true, Ordering::SeqCst);
                result
            })
            .expect("spawning the fuzz worker")
    };
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if done.load(Ordering::SeqCst) {
            break;
        }
        let (seed, since) = *current.lock().unwrap_or_else(|e| e.into_inner());
        let running_for = start.elapsed().saturating_sub(since);
        if running_for > t.hang_after {
            let file = save(name, seed, &to_bytes(&generate(&mut Rng::new(seed))));
            panic!(
                "fuzz {name}: case seed {seed:#x} hangs (still running after {running_for:.1?}); input in {}\n\
                 replay: MINIVMM_FUZZ_SEED={seed:#x} MINIVMM_FUZZ_CASES=1 cargo test --release --test fuzz {name} -- --nocapture",
                file.display()
            );
        }
    }
    match worker.join().expect("the fuzz worker itself panicked") {
        Ok(n) => {
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "fuzz {name}: {n} cases in {secs:.1} s ({:.0}/s), no panic, no hang",
                n as f64 / secs.max(1e-9)
            );
            n
        }
        Err((seed, msg)) => {
            let file = save(name, seed, &to_bytes(&generate(&mut Rng::new(seed))));
            panic!(
                "fuzz {name}: case seed {seed:#x} panicked: {msg}\ninput in {}\n\
                 replay: MINIVMM_FUZZ_SEED={seed:#x} MINIVMM_FUZZ_CASES=1 cargo test --release --test fuzz {name} -- --nocapture",
                file.display()
            );
        }
    }
}

fn save(name: &str, seed: u64, bytes: &[u8]) -> PathBuf {
    let dir = crash_dir();
    let file = dir.join(format!("{name}-{seed:#x}.bin"));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&file, bytes)) {
        eprintln!("fuzz {name}: cannot save {}: {e}", file.display());
    }
    file
}

/// Byte-level mutations, aimed at `hot` offsets (header fields) most of the time.
pub struct Mutator<'a> {
    pub rng: &'a mut Rng,
    /// Field offsets and widths (1, 2, 4 or 8) worth hitting.
    pub hot: &'a [(usize, usize)],
    /// Other inputs to splice from.
    pub donors: &'a [&'a [u8]],
}

impl Mutator<'_> {
    fn offset(&mut self, len: usize) -> usize {
        if !self.hot.is_empty() && self.rng.chance(2, 3) {
            let (off, width) = *self.rng.pick(self.hot);
            off + self.rng.index(width)
        } else {
            self.rng.index(len.max(1))
        }
    }

    fn value_for(&mut self, data_len: usize) -> u64 {
        match self.rng.below(4) {
            // Lengths and offsets near the input's own size.
            0 => (data_len as u64)
                .wrapping_add(self.rng.below(33))
                .wrapping_sub(16),
            _ => self.rng.interesting_u64(),
        }
    }

    /// Applies one random mutation.
    pub fn mutate_once(&mut self, data: &mut Vec<u8>) {
        let len = data.len();
        match self.rng.below(12) {
            // Bit flip.
            0 | 1 if len > 0 => {
                let i = self.offset(len).min(len - 1);
                data[i] ^= 1 << self.rng.below(8);
            }
            // Interesting byte.
            2 if len > 0 => {
                let i = self.offset(len).min(len - 1);
                data[i] = *self.rng.pick(INTERESTING_BYTES);
            }
            // Interesting integer into a field.
            3..=5 => {
                let (off, width) = if !self.hot.is_empty() && self.rng.chance(4, 5) {
                    *self.rng.pick(self.hot)
                } else {
                    (
                        self.rng.index(len.max(1)),
                        *self.rng.pick(&[1usize, 2, 4, 8]),
                    )
                };
                let v = self.value_for(len).to_le_bytes();
                for (k, b) in v.iter().take(width).enumerate() {
                    if let Some(d) = data.get_mut(off + k) {
                        *d = *b;
                    }
                }
            }
            // Arithmetic on a field.
            6 if !self.hot.is_empty() => {
                let (off, width) = *self.rng.pick(self.hot);
                if off + width <= len {
                    let mut buf = [0u8; 8];
                    buf[..width].copy_from_slice(&data[off..off + width]);
                    let delta = self.rng.below(33).wrapping_sub(16);
                    let v = u64::from_le_bytes(buf).wrapping_add(delta).to_le_bytes();
                    data[off..off + width].copy_from_slice(&v[..width]);
                }
            }
            // Truncate, often just around a field.
            7 => {
                let at = if !self.hot.is_empty() && self.rng.chance(1, 2) {
                    let (off, width) = *self.rng.pick(self.hot);
                    off + self.rng.index(width + 1)
                } else {
                    self.rng.index(len + 1)
                };
                data.truncate(at);
            }
            // Extend.
            8 => {
                let max = if self.rng.chance(1, 8) { 1 << 16 } else { 512 };
                let n = 1 + self.rng.index(max);
                match self.rng.below(3) {
                    0 => data.resize(len + n, 0),
                    1 => data.resize(len + n, 0xff),
                    _ => {
                        let extra = self.rng.bytes(n);
                        data.extend_from_slice(&extra);
                    }
                }
            }
            // Splice a chunk of another input over or into this one.
            9 if !self.donors.is_empty() => {
                let donor = *self.rng.pick(self.donors);
                if !donor.is_empty() {
                    let from = self.rng.index(donor.len());
                    let n = 1 + self.rng.index((donor.len() - from).min(4096));
                    let chunk = &donor[from..from + n];
                    let at = self.rng.index(len + 1);
                    if self.rng.chance(1, 2) {
                        let end = (at + n).min(len);
                        data.splice(at..end, chunk.iter().copied());
                    } else {
                        data.splice(at..at, chunk.iter().copied());
                    }
                }
            }
            // Delete a range.
            10 if len > 0 => {
                let at = self.rng.index(len);
                let n = 1 + self.rng.index((len - at).min(256));
                data.drain(at..at + n);
            }
            // Copy a range within the input.
            _ if len > 1 => {
                let from = self.rng.index(len);
                let to = self.rng.index(len);
                let n = 1 + self.rng.index((len - from.max(to)).min(64));
                data.copy_within(from..from + n, to);
            }
            _ => data.push(self.rng.byte()),
        }
    }

    pub fn mutate(&mut self, data: &mut Vec<u8>, max_rounds: u64) {
        let rounds = 1 + self.rng.below(max_rounds);
        for _ in 0..rounds {
            self.mutate_once(data);
        }
    }
}
