//! Builds the test guests under `guests/` (GNU assembler sources) with the
//! system `cc`, `ld` and `objcopy`, into `$OUT_DIR/guests/`, and exports that
//! directory to the crate as `MINIVMM_GUESTS_DIR`.
//!
//! Besides the guests themselves, every 64-bit ELF guest is also linked with
//! a small PVH shim into `$OUT_DIR/guests/qemu-pvh/<name>`, so that it can be
//! run under `qemu-system-x86_64 -kernel` for cross-checking.

// A build script reports failure by panicking: cargo shows the message and stops.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const CC: &str = "cc";
const LD: &str = "ld";
const OBJCOPY: &str = "objcopy";
/// Flags common to every `ld` invocation: static x86-64 ELF, no build ID.
const LD_FLAGS: &[&str] = &[
    "-m",
    "elf_x86_64",
    "-nostdlib",
    "-static",
    "--build-id=none",
];

/// How a guest is entered, which decides how it is linked and packaged.
enum Kind {
    /// ELF entered in 64-bit long mode at its entry point (no PVH note).
    Elf64,
    /// ELF with a Xen PVH note, entered in 32-bit protected mode.
    Pvh,
    /// Linux boot protocol bzImage: setup sectors + flat payload at 1 MiB.
    BzImage,
    /// Not a guest kernel: a static 32-bit Linux program (the initramfs /init).
    LinuxUser32,
}

struct Guest {
    /// Output file name (the VMM's tests refer to these).
    name: &'static str,
    /// Assembler sources under `guests/`, linked together.
    sources: &'static [&'static str],
    kind: Kind,
}

const LIB64: &str = "lib64.S";
const LIB32: &str = "lib32.S";

#[rustfmt::skip]
const GUESTS: &[Guest] = &[
    Guest { name: "hello64.elf", sources: &["hello64.S", LIB64], kind: Kind::Elf64 },
    Guest { name: "hello-pvh.elf", sources: &["hello-pvh.S", LIB32], kind: Kind::Pvh },
    Guest { name: "hello-bzimage.bin", sources: &["bzimage-head.S", "enter64.S", LIB64], kind: Kind::BzImage },
    Guest { name: "smp.elf", sources: &["smp.S", "smp-boot.S", LIB64], kind: Kind::Elf64 },
    Guest { name: "echo.elf", sources: &["echo.S", LIB64], kind: Kind::Elf64 },
    Guest { name: "triple-fault.elf", sources: &["triple-fault.S", LIB64], kind: Kind::Elf64 },
    Guest { name: "panic.elf", sources: &["panic.S", LIB64], kind: Kind::Elf64 },
    Guest { name: "spin.elf", sources: &["spin.S", LIB64], kind: Kind::Elf64 },
    Guest { name: "memread.elf", sources: &["memread.S", LIB64], kind: Kind::Elf64 },
    Guest { name: "bad-insn.elf", sources: &["bad-insn.S", LIB64], kind: Kind::Elf64 },
    Guest { name: "int3.elf", sources: &["int3.S", LIB64], kind: Kind::Elf64 },
    Guest { name: "reset-pvh.elf", sources: &["reset-pvh.S", LIB32], kind: Kind::Pvh },
    Guest { name: "acpi-pvh.elf", sources: &["acpi-pvh.S", LIB32], kind: Kind::Pvh },
    Guest { name: "flood-pvh.elf", sources: &["flood-pvh.S", LIB32], kind: Kind::Pvh },
    Guest { name: "gdbtest.elf", sources: &["gdbtest.S", LIB64], kind: Kind::Elf64 },
    Guest { name: "gdbtest-smp.elf", sources: &["gdbtest-smp.S", "smp-boot.S", LIB64], kind: Kind::Elf64 },
    Guest { name: "linux-init", sources: &["linux-init.S"], kind: Kind::LinuxUser32 },
];

/// Linker script shared by all ELF guests and the bzImage payload.
const LINKER_SCRIPT: &str = "guest.ld";
/// Real-mode setup sectors of the bzImage.
const BZIMAGE_SETUP: &str = "bzimage-setup.S";
/// Testing-only PVH entry for the 64-bit guests (see qemu-pvh-shim.S).
const QEMU_PVH_SHIM: &[&str] = &["qemu-pvh-shim.S", "enter64.S"];
/// The bzImage is loaded at 1 MiB; `init_size` covers it plus this slack.
const BZIMAGE_INIT_SLACK: u64 = 0x10000;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=guests");

    let src_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
        .join("guests");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("guests");
    let b = Builder::new(src_dir, out_dir);

    for guest in GUESTS {
        match guest.kind {
            Kind::Elf64 => b.elf64(guest),
            Kind::Pvh => b.pvh(guest),
            Kind::BzImage => b.bzimage(guest),
            Kind::LinuxUser32 => b.linux_user32(guest),
        }
    }

    println!("cargo:rustc-env=MINIVMM_GUESTS_DIR={}", b.out_dir.display());
}

struct Builder {
    src_dir: PathBuf,
    out_dir: PathBuf,
    obj_dir: PathBuf,
}

impl Builder {
    fn new(src_dir: PathBuf, out_dir: PathBuf) -> Self {
        require_tool(CC, "gcc");
        require_tool(LD, "binutils");
        require_tool(OBJCOPY, "binutils");
        let obj_dir = out_dir.join("obj");
        for dir in [&out_dir, &obj_dir, &out_dir.join("qemu-pvh")] {
            fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        Builder {
            src_dir,
            out_dir,
            obj_dir,
        }
    }

    /// 64-bit ELF: linked as is, plus a PVH-bootable copy for QEMU.
    fn elf64(&self, guest: &Guest) {
        let objs = self.assemble_all(guest.sources, &[]);
        self.link(&objs, &self.out_dir.join(guest.name), None);

        let mut with_shim = self.assemble_all(QEMU_PVH_SHIM, &[]);
        with_shim.extend(objs);
        let qemu = self.out_dir.join("qemu-pvh").join(guest.name);
        self.link(&with_shim, &qemu, None);
    }

    /// PVH ELF: the sources carry the Xen note themselves (PVH_NOTE).
    fn pvh(&self, guest: &Guest) {
        let objs = self.assemble_all(guest.sources, &[]);
        self.link(&objs, &self.out_dir.join(guest.name), None);
    }

    /// bzImage: payload ELF at 1 MiB -> flat binary, setup sectors in front.
    fn bzimage(&self, guest: &Guest) {
        let stem = guest.name.trim_end_matches(".bin");
        let objs = self.assemble_all(guest.sources, &[]);
        let payload_elf = self.obj_dir.join(format!("{stem}-payload.elf"));
        self.link(&objs, &payload_elf, Some("startup_64"));
        let payload_bin = self.obj_dir.join(format!("{stem}-payload.bin"));
        flatten(&payload_elf, &payload_bin);
        let payload = read(&payload_bin);

        let syssize = payload.len().div_ceil(16) as u64;
        let init_size = (payload.len() as u64).next_multiple_of(0x1000) + BZIMAGE_INIT_SLACK;
        let defines = [
            format!("-DSYSSIZE={syssize:#x}"),
            format!("-DINIT_SIZE={init_size:#x}"),
        ];
        let setup_obj = self.assemble(BZIMAGE_SETUP, &defines);
        let setup_elf = self.obj_dir.join(format!("{stem}-setup.elf"));
        run(Command::new(LD)
            .args(LD_FLAGS)
            .args(["-Ttext=0", "-e", "0", "--section-start=.setup=0", "-o"])
            .arg(&setup_elf)
            .arg(&setup_obj));
        let setup_bin = self.obj_dir.join(format!("{stem}-setup.bin"));
        flatten(&setup_elf, &setup_bin);
        let mut image = read(&setup_bin);

        let setup_sects = image[0x1f1] as usize;
        assert_eq!(
            image.len(),
            (setup_sects + 1) * 512,
            "{BZIMAGE_SETUP}: setup is not (setup_sects + 1) sectors long"
        );
        image.extend_from_slice(&payload);
        let out = self.out_dir.join(guest.name);
        fs::write(&out, image).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
    }

    /// A static i386 Linux executable: no libc, no dynamic loader.
    fn linux_user32(&self, guest: &Guest) {
        let mut objs = Vec::new();
        for source in guest.sources {
            let obj = self.obj_dir.join(Path::new(source).with_extension("o"));
            run(Command::new(CC)
                .args([
                    "-c",
                    "-m32",
                    "-nostdinc",
                    "-ffreestanding",
                    "-Wa,--noexecstack",
                ])
                .arg("-o")
                .arg(&obj)
                .arg(self.src_dir.join(source)));
            objs.push(obj);
        }
        run(Command::new(LD)
            .args([
                "-m",
                "elf_i386",
                "-static",
                "-nostdlib",
                "--build-id=none",
                "-z",
                "noexecstack",
            ])
            .arg("-o")
            .arg(self.out_dir.join(guest.name))
            .args(&objs));
    }

    fn assemble_all(&self, sources: &[&str], defines: &[String]) -> Vec<PathBuf> {
        sources.iter().map(|s| self.assemble(s, defines)).collect()
    }

    /// Assembles one `.S` file (run through the C preprocessor).
    fn assemble(&self, source: &str, defines: &[String]) -> PathBuf {
        let obj = self.obj_dir.join(Path::new(source).with_extension("o"));
        run(Command::new(CC)
            .args(["-c", "-m64", "-g", "-nostdinc", "-ffreestanding"])
            .args(["-Wa,--noexecstack", "-Wa,-mx86-used-note=no"])
            .arg("-I")
            .arg(&self.src_dir)
            .args(defines)
            .arg("-o")
            .arg(&obj)
            .arg(self.src_dir.join(source)));
        obj
    }

    /// Links objects with the guest linker script (symbols are kept).
    fn link(&self, objs: &[PathBuf], out: &Path, entry: Option<&str>) {
        let mut cmd = Command::new(LD);
        cmd.args(LD_FLAGS)
            .args(["-z", "max-page-size=0x1000", "-z", "noexecstack"])
            .arg("-T")
            .arg(self.src_dir.join(LINKER_SCRIPT));
        if let Some(entry) = entry {
            cmd.args(["-e", entry]);
        }
        run(cmd.arg("-o").arg(out).args(objs));
    }
}

/// `objcopy -O binary`: the loadable sections as one flat image.
fn flatten(elf: &Path, bin: &Path) {
    run(Command::new(OBJCOPY)
        .args(["-O", "binary"])
        .arg(elf)
        .arg(bin));
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Fails the build with a clear message if a required tool is missing.
fn require_tool(tool: &str, package: &str) {
    if let Err(e) = Command::new(tool).arg("--version").output() {
        panic!(
            "minivmm: `{tool}` is needed to build the test guests in guests/ but could not \
             be run ({e}); please install {package} (e.g. `apt-get install gcc binutils`)"
        );
    }
}

fn run(cmd: &mut Command) {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !output.status.success() {
        panic!(
            "guest build step failed: {cmd:?}\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Surface assembler/linker warnings in `cargo build -vv` output.
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stderr.lines() {
        println!("cargo:warning={line}");
    }
}
