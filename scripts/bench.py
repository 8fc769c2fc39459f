#!/usr/bin/env python3
"""minivmm benchmarks, side by side with QEMU.

    python3 scripts/bench.py --minivmm target/release/minivmm --guests "$(scripts/guests-dir --release)"
    make bench                                  # the same
    scripts/bench.py ... --quick                # fewer runs (about a minute)
    scripts/bench.py ... --only startup,serial  # some benchmarks only

Benchmarks (each several runs, medians; QEMU runs with -enable-kvm -M pc -nodefaults):
  startup  whole-process wall time of reset-pvh.elf (resets at once), every variant once per
           round, rounds interleaved: minivmm (default: the VM's teardown left to a keeper
           process) and with --wait-teardown; QEMU 10 with qboot, with qboot and
           `-run-with async-teardown=on`, with SeaBIOS; QEMU 7.2 (--qemu72) with its qboot,
           with and without `-async-teardown`.          goal: >= 10x QEMU 10's best
  serial   flood-pvh.elf writes 65536 bytes to COM1 (one OUT each); output read through a pipe
           and checked; bytes/s = 65536 / (flood time - reset time).     goal: minivmm >= QEMU
  memory   echo.elf (waits for a line) with --mem 256: /proc/PID/status and smaps sampled after
           0.5 s; VMM memory = VmRSS - Rss of the guest-RAM mapping.       goal: < 5 MiB
  gdb      real `gdb -batch -nx` with a Python script (scripts/bench/gdb_bench.py), flood-pvh.elf
           on both: stepi/s, hbreak round trips/s, `dump binary memory` of 16 MiB, register
           reads/s; Ctrl-C-to-stop latency through GDB/MI on echo.elf.
           goals: stepi and round trips >= 1.5x QEMU, memory >= 4x QEMU, Ctrl-C <= QEMU
           (this memory row reads a 32-bit guest's mostly-zero memory: see memread)
  memread  memory reads of real data as kernel developers do them: memread.elf (long mode,
           its own page tables) fills 16 MiB with an LCG; GDB `dump binary memory` and LLDB
           `memory read --binary --force` read it, and 16 MiB of zeros after it, at Linux's
           direct-map addresses (0xffff888001000000), under minivmm, QEMU 10 and QEMU 7.2,
           every read checked byte for byte. The ceiling: the same clients against a
           stand-in stub (scripts/bench/standin_stub.py) that answers from a prebuilt buffer,
           no VM behind it (hex `m`; for LLDB binary `x` too).
           goals: GDB at its ceiling, LLDB >= 4x QEMU 10
  core     core files of a 1 GiB guest (echo.elf idle, and 3/4 full with a random initrd):
           minivmm's `monitor dump` against QEMU 10's dump-guest-memory (QMP) plus fsync;
           MiB/s and size on disk (scripts/bench/core_bench.py)
  linux    Debian's stock cloud kernel (scripts/fetch-linux.sh) with the test initramfs, 2 vCPUs,
           512 MiB, the same command line on both: seconds from start to the kernel's banner
           and to the initramfs marker line (once each: minutes on an emulating host). Where
           KVM emulates guest code the marker cannot be reached (user-mode system calls fail),
           so only the banner is timed unless --linux-full, which times `Run /init` instead.

Benchmarks report; they never fail on a missed goal (exit status 0 unless the bench itself
cannot run). Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
GDB_SCRIPT = HERE / "bench" / "gdb_bench.py"

QBOOT_CANDIDATES = [
    "/usr/share/qemu/qboot.rom",
    "/usr/share/qboot/bios.bin",
    "/usr/share/qemu-kvm/qboot.rom",
]
QEMU72_DIR = Path.home() / ".cache/minivmm/hwkvm/qemu-7.2"
QEMU_INSTALL_HINT = "apt-get install -y qemu-system-x86   (Debian/Ubuntu; qboot.rom is in qemu-system-data)"

FLOOD_BYTES = 65536
FLOOD_LINE = b"0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmno\n"
FLOOD_LINES = 1024
# flood-pvh.elf: the per-byte loop (`1: in al, dx` in flood_line) and its pattern in .rodata.
# Looked up with nm at run time; these are only the fallbacks.
FLOOD_LOOP_OFFSET = 0xA  # flood_line + 0xa is the inner loop's `in al, dx`
MIB = 1 << 20

# ----------------------------------------------------------------------------------------------
# Child processes: every one is tracked and killed (its whole process group) on the way out.

CHILDREN: list[subprocess.Popen] = []


def spawn(cmd, **kw) -> subprocess.Popen:
    p = subprocess.Popen([str(c) for c in cmd], start_new_session=True, **kw)
    CHILDREN.append(p)
    return p


def kill_tree(p: subprocess.Popen) -> None:
    if p.returncode is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=5)
    except (subprocess.TimeoutExpired, ChildProcessError):
        pass


def kill_all() -> None:
    for p in CHILDREN:
        kill_tree(p)
    CHILDREN.clear()


def _on_signal(sig, _frame):
    raise SystemExit(128 + sig)


@dataclass
class Run:
    seconds: float
    rc: int
    out: bytes
    err: bytes
    maxrss_kib: int = 0


def _drain(stream, sink: list):
    try:
        sink.append(stream.read())
    except Exception:
        pass


def run_timed(cmd, timeout: float, stdin_data: bytes | None = None, env: dict | None = None) -> Run:
    """Runs cmd to its end with stdout/stderr on pipes that we read; returns the wall time from
    just before fork to the process's exit (wait4), with its peak RSS."""
    out: list[bytes] = []
    err: list[bytes] = []
    t0 = time.perf_counter()
    p = spawn(
        cmd,
        stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    readers = [
        threading.Thread(target=_drain, args=(p.stdout, out), daemon=True),
        threading.Thread(target=_drain, args=(p.stderr, err), daemon=True),
    ]
    for r in readers:
        r.start()
    if stdin_data is not None:
        try:
            p.stdin.write(stdin_data)
            p.stdin.close()
        except BrokenPipeError:
            pass
    timer = threading.Timer(timeout, kill_tree, args=(p,))
    timer.start()
    try:
        _, status, ru = os.wait4(p.pid, 0)
        t1 = time.perf_counter()
    finally:
        timer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join(timeout=5)
    for s in (p.stdout, p.stderr):
        s.close()
    return Run(t1 - t0, p.returncode, b"".join(out), b"".join(err), ru.ru_maxrss)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30) -> bool:
    """Waits until something listens on 127.0.0.1:port, without connecting (a connection would
    count as the debugger attaching)."""
    want = ":%04X" % port
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        for f in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                for line in Path(f).read_text().splitlines()[1:]:
                    cols = line.split()
                    if cols[1].endswith(want) and cols[3] == "0A":
                        return True
            except OSError:
                pass
        time.sleep(0.01)
    return False


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ----------------------------------------------------------------------------------------------
# Results table

@dataclass
class Row:
    name: str
    unit_fmt: str  # format for numbers
    minivmm: float | None
    qboot: float | None = None
    seabios: float | None = None
    higher_is_better: bool = False
    goal: str = ""
    # returns True (PASS) / False (MISS) / None (n/a)
    judge: object = None
    note: str = ""

    def ratio(self):
        if self.minivmm is None or self.qboot is None or not self.minivmm or not self.qboot:
            return None
        return self.minivmm / self.qboot if self.higher_is_better else self.qboot / self.minivmm


@dataclass
class SideTable:
    """A table of its own below the main one: one row per variant or measurement."""
    title: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    tables: list[SideTable] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)

    def add(self, row: Row):
        self.rows.append(row)


def fmt(v, f):
    if v is None:
        return "-"
    return f.format(v)


def print_table(res: Results):
    head = ["benchmark", "minivmm", "qemu(qboot)", "qemu(seabios)", "ratio", "goal", "result"]
    lines = []
    for r in res.rows:
        ratio = r.ratio()
        verdict = r.judge(r) if r.judge else None
        lines.append([
            r.name,
            fmt(r.minivmm, r.unit_fmt),
            fmt(r.qboot, r.unit_fmt),
            fmt(r.seabios, r.unit_fmt),
            "-" if ratio is None else f"{ratio:.2f}x",
            r.goal or "-",
            {True: "PASS", False: "MISS", None: "-" if not r.goal else "n/a"}[verdict],
        ])
    widths = [max(len(str(x[i])) for x in lines + [head]) for i in range(len(head))]
    def show(cols):
        return "  ".join(
            str(c).ljust(widths[i]) if i in (0, 5, 6) else str(c).rjust(widths[i])
            for i, c in enumerate(cols)
        ).rstrip()
    print()
    print(show(head))
    print(show(["-" * w for w in widths]))
    for l in lines:
        print(show(l))
    for t in res.tables:
        print_side_table(t)
    print()
    print("ratio: how many times better minivmm is than QEMU+qboot (>1 = minivmm better).")
    for r in res.rows:
        if r.note:
            print(f"  {r.name.strip()}: {r.note}")
    for n in res.notes:
        print("note: " + n)


def print_side_table(t: SideTable):
    head = [""] + t.columns
    widths = [max(len(str(r[i])) for r in t.rows + [head]) for i in range(len(head))]
    def show(cols):
        return "  ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
                         for i, c in enumerate(cols)).rstrip()
    print()
    print(t.title)
    print(show(head))
    print(show(["-" * w for w in widths]))
    for r in t.rows:
        print(show(r))


def ratio_at_least(x):
    def j(r: Row):
        q = r.ratio()
        return None if q is None else q >= x
    return j


def absolute_below(limit):
    return lambda r: None if r.minivmm is None else r.minivmm < limit


# ----------------------------------------------------------------------------------------------
# The environment

@dataclass
class Env:
    minivmm: Path
    guests: Path
    qemu: str | None
    qboot: str | None
    qemu_kvm_ok: bool
    gdb: str | None
    lldb: str | None
    quick: bool
    machine: str
    tmp: Path
    # QEMU 7.2 unpacked beside the installed one (scripts/hwkvm/setup): binary, share dir.
    qemu72: str | None = None
    qemu72_share: str | None = None
    qemu72_ok: bool = False

    def guest(self, name: str) -> Path:
        return self.guests / name

    def minivmm_cmd(self, kernel: str, *extra):
        return [self.minivmm, "--kernel", self.guest(kernel), *extra]

    def qemu_cmd(self, kernel, firmware: str, mem_mib: int = 256, *extra):
        cmd = [
            self.qemu, "-enable-kvm", "-M", self.machine, "-m", str(mem_mib),
            "-kernel", kernel, "-display", "none", "-nodefaults", "-no-user-config",
            "-no-reboot", "-serial", "stdio", "-monitor", "none",
        ]
        if firmware == "qboot":
            cmd += ["-bios", self.qboot]
        return cmd + list(extra)

    def qemu72_cmd(self, kernel, mem_mib: int = 256, *extra):
        """QEMU 7.2 with its own firmware directory and its own qboot (it must not load the
        installed QEMU's modules: -nodefaults, -L)."""
        return [
            self.qemu72, "-L", self.qemu72_share, "-enable-kvm", "-M", self.machine,
            "-m", str(mem_mib), "-kernel", kernel, "-display", "none", "-nodefaults",
            "-no-user-config", "-no-reboot", "-serial", "stdio", "-monitor", "none",
            "-bios", str(Path(self.qemu72_share) / "qboot.rom"), *extra,
        ]


def find_qboot():
    for c in QBOOT_CANDIDATES:
        if os.path.exists(c):
            return c
    return None


def host_notes(env: Env, res: Results):
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    r = run_timed(env.minivmm_cmd("reset-pvh.elf"), timeout=30)
    emulating = b"emulates guest code" in r.err
    res.notes.append(
        f"host: {os.cpu_count()} CPUs ({cpu}), kernel {os.uname().release}"
        + ("; emulating nested KVM (minivmm: \"this host's KVM emulates guest code\"): "
           "every guest instruction is emulated, so guest-bound numbers are far below "
           "hardware KVM" if emulating else "; hardware KVM")
    )
    res.raw["host"] = {"cpus": os.cpu_count(), "cpu": cpu, "emulating_kvm": emulating}


def check_qemu(env: Env, res: Results):
    if not env.qemu:
        print(f"bench: qemu-system-x86_64 not found: QEMU columns are empty. Install: {QEMU_INSTALL_HINT}",
              file=sys.stderr)
        res.notes.append(f"QEMU not installed ({QEMU_INSTALL_HINT}); only minivmm's numbers")
        return
    ver = subprocess.run([env.qemu, "--version"], capture_output=True, text=True).stdout.splitlines()
    res.notes.append(f"QEMU: {ver[0] if ver else '?'}, -enable-kvm -M {env.machine}, "
                     f"qboot: {env.qboot or 'not found'}")
    if not env.qboot:
        print(f"bench: qboot.rom not found ({', '.join(QBOOT_CANDIDATES)}); install: {QEMU_INSTALL_HINT}",
              file=sys.stderr)
    fw = "qboot" if env.qboot else "seabios"
    r = run_timed(env.qemu_cmd(env.guest("reset-pvh.elf"), fw), timeout=60)
    if r.rc != 0:
        env.qemu_kvm_ok = False
        msg = r.err.decode(errors="replace").strip().splitlines()
        why = msg[-1] if msg else f"exit status {r.rc}"
        print(f"bench: `qemu-system-x86_64 -enable-kvm` does not work here ({why}): "
              "QEMU columns are empty", file=sys.stderr)
        res.notes.append(f"qemu-system-x86_64 -enable-kvm failed here: {why}")
    else:
        env.qemu_kvm_ok = True
    if env.qemu72 and env.qemu72_share:
        ver = subprocess.run([env.qemu72, "--version"], capture_output=True, text=True).stdout.splitlines()
        r = run_timed(env.qemu72_cmd(env.guest("reset-pvh.elf")), timeout=60)
        env.qemu72_ok = r.rc == 0
        res.notes.append(f"QEMU 7.2: {ver[0] if ver else '?'} ({env.qemu72}, -L {env.qemu72_share}, "
                         "its own qboot)" + ("" if env.qemu72_ok else f": does not run here (exit {r.rc})"))
    else:
        res.notes.append("QEMU 7.2 not found (--qemu72; scripts/hwkvm/setup unpacks it): no 7.2 column")


# ----------------------------------------------------------------------------------------------
# 1. Start-up

def bench_startup(env: Env, res: Results) -> dict:
    """Every variant once per round, rounds interleaved, so that a busy host weighs on all alike."""
    rounds = 5 if env.quick else 15
    kernel = env.guest("reset-pvh.elf")
    variants = {"minivmm": env.minivmm_cmd("reset-pvh.elf"),
                "minivmm --wait-teardown": env.minivmm_cmd("reset-pvh.elf", "--wait-teardown")}
    if env.qemu_kvm_ok:
        if env.qboot:
            variants["QEMU 10 qboot"] = env.qemu_cmd(kernel, "qboot")
            variants["QEMU 10 qboot async-teardown"] = env.qemu_cmd(
                kernel, "qboot", 256, "-run-with", "async-teardown=on")
        variants["QEMU 10 SeaBIOS"] = env.qemu_cmd(kernel, "seabios")
    if env.qemu72_ok:
        variants["QEMU 7.2 qboot"] = env.qemu72_cmd(kernel)
        variants["QEMU 7.2 qboot -async-teardown"] = env.qemu72_cmd(kernel, 256, "-async-teardown")
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, cmd in list(variants.items()):
            r = run_timed(cmd, timeout=120)
            if r.rc != 0:
                why = f"{name} exited {r.rc}: {r.err.decode(errors='replace')[-300:]}"
                if name.startswith("minivmm"):
                    raise RuntimeError(why)
                res.notes.append(f"startup: {why} (left out)")
                del variants[name], times[name]
                continue
            times[name].append(r.seconds)
    med = {k: median(v) for k, v in times.items()}
    res.raw["startup_s"] = times
    q10 = [med[k] for k in ("QEMU 10 qboot", "QEMU 10 qboot async-teardown") if k in med]
    best_q10 = min(q10) if q10 else None
    res.add(Row(
        "start to exit (reset-pvh), ms", "{:.1f}",
        med["minivmm"] * 1e3,
        best_q10 * 1e3 if best_q10 else None,
        med["QEMU 10 SeaBIOS"] * 1e3 if "QEMU 10 SeaBIOS" in med else None,
        goal=">= 10x qboot", judge=ratio_at_least(10),
        note=f"medians of {rounds} interleaved rounds; the qboot column is QEMU 10's best "
             f"(with or without -run-with async-teardown=on); minivmm min {min(times['minivmm'])*1e3:.1f} ms",
    ))
    base = med.get("QEMU 10 qboot")
    res.tables.append(SideTable(
        f"start to exit, reset-pvh.elf (256 MiB), ms: medians of {rounds} interleaved rounds",
        ["median", "min", "max", "QEMU 10 qboot ÷ this"],
        [[k, f"{med[k]*1e3:.1f}", f"{min(v)*1e3:.1f}", f"{max(v)*1e3:.1f}",
          f"{base / med[k]:.1f}x" if base else "-"] for k, v in times.items()],
    ))
    return {"minivmm": med["minivmm"], "qboot": med.get("QEMU 10 qboot")}


# ----------------------------------------------------------------------------------------------
# 2. Serial throughput

def check_flood(out: bytes) -> str | None:
    i = out.find(FLOOD_LINE)
    if i < 0:
        return "no flood output"
    body = out[i:i + FLOOD_BYTES]
    if body != FLOOD_LINE * FLOOD_LINES:
        return f"flood output corrupt ({out.count(FLOOD_LINE)} of {FLOOD_LINES} lines intact)"
    if b"flood: done" not in out[i + FLOOD_BYTES:]:
        return "no 'flood: done'"
    return None


def bench_serial(env: Env, res: Results, reset_med: dict | None):
    n = 1 if env.quick else 3
    if reset_med is None:
        reset_med = {"minivmm": median([run_timed(env.minivmm_cmd("reset-pvh.elf"), 30).seconds
                                        for _ in range(5)])}
        if env.qemu_kvm_ok and env.qboot:
            reset_med["qboot"] = median([
                run_timed(env.qemu_cmd(env.guest("reset-pvh.elf"), "qboot"), 60).seconds
                for _ in range(3)])

    def series(cmd, n, who):
        times = []
        for _ in range(n):
            r = run_timed(cmd, timeout=240)
            bad = check_flood(r.out)
            if r.rc != 0 or bad:
                res.notes.append(f"serial/{who}: exit {r.rc}, {bad or 'output ok'}")
                continue
            times.append(r.seconds)
        return times

    m = series(env.minivmm_cmd("flood-pvh.elf"), n, "minivmm")
    q = []
    if env.qemu_kvm_ok and env.qboot:
        q = series(env.qemu_cmd(env.guest("flood-pvh.elf"), "qboot"), n, "qemu")
    res.raw["flood_s"] = {"minivmm": m, "qboot": q}

    def kib_s(times, base):
        t = median(times)
        if t is None or base is None:
            return None
        return FLOOD_BYTES / max(t - base, 1e-6) / 1024
    res.add(Row(
        "serial throughput, KiB/s", "{:.1f}",
        kib_s(m, reset_med.get("minivmm")), kib_s(q, reset_med.get("qboot")),
        higher_is_better=True, goal=">= QEMU", judge=ratio_at_least(1.0),
        note=f"65536 B, 2 port exits per byte (LSR poll + OUTSB), pipe to the bench; "
             f"{len(m)}/{len(q)} runs, all output checked",
    ))


# ----------------------------------------------------------------------------------------------
# 3. Memory

def read_status(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if v.strip().endswith("kB"):
            out[k] = int(v.split()[0])
    return out


def guest_ram_rss_kib(pid: int, mem_mib: int) -> tuple[int, int]:
    """Rss (and count) of the anonymous mappings that look like guest RAM: at least the guest's
    size and at most 4 MiB more (QEMU over-allocates for alignment)."""
    want = mem_mib * 1024
    rss = count = 0
    size = None
    cur_anon = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split()
            cur_anon = len(parts) < 6
            size = None
        elif line.startswith("Size:"):
            size = int(line.split()[1])
        elif line.startswith("Rss:") and cur_anon and size is not None:
            if want <= size <= want + 4096:
                rss += int(line.split()[1])
                count += 1
    return rss, count


def wait_for_output(stream, needle: bytes, timeout: float) -> bytes:
    """Reads stream (in a thread) until needle shows up; returns what was read."""
    buf = bytearray()
    q: queue.Queue = queue.Queue()
    def rd():
        while True:
            b = os.read(stream.fileno(), 4096)
            q.put(b)
            if not b:
                return
    threading.Thread(target=rd, daemon=True).start()
    deadline = time.monotonic() + timeout
    while needle not in buf:
        try:
            b = q.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if not b:
            break
        buf += b
    return bytes(buf)


def sample_echo(cmd, mem_mib: int) -> dict:
    p = spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        got = wait_for_output(p.stdout, b"echo: ready", 60)
        if b"echo: ready" not in got:
            raise RuntimeError(f"no 'echo: ready' from {cmd[0]}: {got[-200:]!r}")
        time.sleep(0.5)
        st = read_status(p.pid)
        guest_rss, nmaps = guest_ram_rss_kib(p.pid, mem_mib)
        p.stdin.write(b"bench\n")
        p.stdin.close()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        return {
            "VmRSS": st.get("VmRSS"), "VmHWM": st.get("VmHWM"), "RssAnon": st.get("RssAnon"),
            "RssFile": st.get("RssFile"), "RssShmem": st.get("RssShmem"),
            "guest_rss": guest_rss, "guest_maps": nmaps,
            "rc": p.returncode,
        }
    finally:
        kill_tree(p)


def peak_rss_kib(env: Env, cmd) -> tuple[int | None, str]:
    """Peak RSS of a short-lived process. wait4()'s ru_maxrss is no good from here: Linux keeps
    the high-water mark across execve, so a child forked from this (~20 MiB) Python reports
    Python's size. /usr/bin/time forks from a small process; without it, poll VmHWM."""
    gnu_time = "/usr/bin/time"
    if os.access(gnu_time, os.X_OK):
        out = env.tmp / "time.out"
        r = run_timed([gnu_time, "-f", "%M", "-o", out, *cmd], timeout=60)
        try:
            return int(out.read_text().split()[-1]), "/usr/bin/time %M"
        except (OSError, ValueError, IndexError):
            pass
    p = spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = None
    try:
        deadline = time.monotonic() + 60
        while p.poll() is None and time.monotonic() < deadline:
            try:
                peak = max(peak or 0, read_status(p.pid).get("VmHWM", 0))
            except OSError:
                pass
            time.sleep(0.0005)
    finally:
        kill_tree(p)
    return peak, "VmHWM polled every 0.5 ms"


def bench_memory(env: Env, res: Results):
    mem = 256
    m = sample_echo(env.minivmm_cmd("echo.elf", "--mem", str(mem)), mem)
    q = None
    qk = env.guests / "qemu-pvh" / "echo.elf"
    if env.qemu_kvm_ok and env.qboot and qk.exists():
        q = sample_echo(env.qemu_cmd(qk, "qboot", mem), mem)
    r, how = peak_rss_kib(env, env.minivmm_cmd("reset-pvh.elf", "--mem", str(mem)))
    rq = None
    if env.qemu_kvm_ok and env.qboot:
        rq, _ = peak_rss_kib(env, env.qemu_cmd(env.guest("reset-pvh.elf"), "qboot", mem))
    res.raw["memory_kib"] = {"minivmm": m, "qemu": q, "reset_peak": [r, rq]}

    def vmm_mib(s):
        return None if s is None else (s["VmRSS"] - s["guest_rss"]) / 1024
    res.add(Row(
        "VMM memory (RSS - guest RAM), MiB", "{:.2f}", vmm_mib(m), vmm_mib(q),
        goal="< 5 MiB", judge=absolute_below(5.0),
        note=(f"echo.elf, --mem {mem}, sampled after 0.5 s: minivmm VmRSS {m['VmRSS']} KiB "
              f"(RssAnon {m['RssAnon']}, RssFile {m['RssFile']}, RssShmem {m['RssShmem']}), "
              f"guest-RAM mapping Rss {m['guest_rss']} KiB from /proc/PID/smaps "
              f"(the {mem} MiB anonymous mapping: pages the guest or the loader touched)"
              + (f"; QEMU VmRSS {q['VmRSS']} KiB, guest RAM Rss {q['guest_rss']} KiB" if q else "")),
    ))
    res.add(Row(
        "peak RSS (reset-pvh), MiB", "{:.2f}", r and r / 1024, rq and rq / 1024,
        note=f"whole process, guest pages included ({how}); "
             f"minivmm's VmHWM while echo.elf ran: {m['VmHWM']} KiB",
    ))


# ----------------------------------------------------------------------------------------------
# 4. GDB stub

def nm_symbols(elf: Path) -> dict:
    try:
        out = subprocess.run(["nm", elf], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    syms = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2]] = int(parts[0], 16)
    return syms


def start_vm_for_gdb(env: Env, who: str, kernel: Path, mem_mib: int, port: int):
    if who == "minivmm":
        cmd = [env.minivmm, "--kernel", kernel, "--mem", str(mem_mib), "--gdb", str(port)]
    else:
        cmd = env.qemu_cmd(kernel, "qboot", mem_mib, "-S", "-gdb", f"tcp:127.0.0.1:{port}")
    # Serial output is not measured here; stdin stays open so echo.elf keeps waiting.
    p = spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_listening(port, p):
        kill_tree(p)
        raise RuntimeError(f"{who}: GDB port {port} never opened")
    return p


def gdb_session(env: Env, who: str, counts: dict) -> dict:
    elf = env.guest("flood-pvh.elf")
    syms = nm_symbols(elf)
    loop = syms.get("flood_line", 0x100011) + FLOOD_LOOP_OFFSET
    probe = syms.get("flood_pattern", 0x1000A4)
    port = free_port()
    dump = env.tmp / f"dump-{who}.bin"
    outf = env.tmp / f"gdb-{who}.json"
    p = start_vm_for_gdb(env, who, elf, 64, port)
    try:
        e = dict(os.environ)
        e.update({
            "BENCH_ELF": str(elf), "BENCH_PORT": str(port), "BENCH_OUT": str(outf),
            "BENCH_STOP": hex(loop), "BENCH_PROBE": hex(probe),
            "BENCH_STEPS": str(counts["steps"]), "BENCH_TRIPS": str(counts["trips"]),
            "BENCH_REGS": str(counts["regs"]),
            "BENCH_DUMP_START": hex(0x100000), "BENCH_DUMP_END": hex(0x100000 + counts["dump"]),
            "BENCH_DUMP_FILE": str(dump),
        })
        if outf.exists():
            outf.unlink()
        gp = spawn([env.gdb, "-batch", "-nx", "-x", GDB_SCRIPT], env=e, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = gp.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            kill_tree(gp)
            raise RuntimeError(f"gdb against {who} timed out")
        if not outf.exists():
            raise RuntimeError(f"gdb against {who} wrote no result: {err.decode(errors='replace')[-400:]}")
        r = json.loads(outf.read_text())
        if "error" in r:
            raise RuntimeError(f"gdb against {who}: {r['error']}")
        return r
    finally:
        kill_tree(p)
        for f in (dump,):
            try:
                f.unlink()
            except OSError:
                pass


class Mi:
    """A GDB/MI session whose output lines are time-stamped as they arrive."""

    def __init__(self, gdb: str):
        self.p = spawn([gdb, "-nx", "-q", "--interpreter=mi2"], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.q.put((time.perf_counter(), line.decode(errors="replace").rstrip()))
        self.q.put((time.perf_counter(), None))

    def send(self, cmd: str) -> float:
        t = time.perf_counter()
        self.p.stdin.write(cmd.encode() + b"\n")
        self.p.stdin.flush()
        return t

    def wait(self, prefix: str, timeout: float = 30) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                t, line = self.q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"GDB/MI: no {prefix!r} within {timeout} s")
            if line is None:
                raise RuntimeError("GDB/MI ended")
            if line.startswith("^error"):
                raise RuntimeError(f"GDB/MI: {line}")
            if line.startswith(prefix):
                return t, line

    def close(self):
        kill_tree(self.p)


def ctrlc_latency(env: Env, who: str, rounds: int) -> list[float]:
    kernel = env.guest("echo.elf") if who == "minivmm" else env.guests / "qemu-pvh" / "echo.elf"
    port = free_port()
    vm = start_vm_for_gdb(env, who, kernel, 64, port)
    mi = Mi(env.gdb)
    try:
        mi.wait("(gdb)")
        for c in ("-gdb-set confirm off", "-gdb-set mi-async on", "-gdb-set pagination off",
                  f"-file-exec-and-symbols {kernel}"):
            mi.send(c)
            mi.wait("^done")
        mi.send(f"-target-select remote 127.0.0.1:{port}")
        mi.wait("^connected")
        # Warm up: let QEMU's firmware run and both guests reach their input-polling loop.
        mi.send("-exec-continue")
        mi.wait("*running")
        time.sleep(1.0)
        mi.send("-exec-interrupt")
        mi.wait("*stopped")
        lat = []
        for _ in range(rounds):
            mi.send("-exec-continue")
            mi.wait("*running")
            time.sleep(0.2)
            t0 = mi.send("-exec-interrupt")
            t1, _ = mi.wait("*stopped")
            lat.append(t1 - t0)
        mi.send("-interpreter-exec console kill")
        return lat
    finally:
        mi.close()
        kill_tree(vm)


def bench_gdb(env: Env, res: Results):
    if not env.gdb:
        res.notes.append("gdb not installed (apt-get install -y gdb): GDB benchmarks skipped")
        return
    counts = ({"steps": 500, "trips": 100, "regs": 200, "dump": 4 * MIB} if env.quick
              else {"steps": 2000, "trips": 500, "regs": 1000, "dump": 16 * MIB})
    runs = 1 if env.quick else 3
    who_list = ["minivmm"] + (["qemu"] if env.qemu_kvm_ok and env.qboot else [])
    sessions = {w: [] for w in who_list}
    for i in range(runs):
        for w in who_list:
            try:
                sessions[w].append(gdb_session(env, w, counts))
            except RuntimeError as e:
                res.notes.append(f"gdb/{w}: {e}")
    res.raw["gdb_sessions"] = sessions

    # Sanity probe: the same registers and bytes at the same place in both.
    if sessions.get("minivmm") and sessions.get("qemu"):
        a, b = sessions["minivmm"][0], sessions["qemu"][0]
        same = a["probe"] == b["probe"] and a["pc_at_stop"] == b["pc_at_stop"]
        res.notes.append(
            "gdb sanity probe (pc at the hot loop, x/8xb flood_pattern): "
            + ("identical in minivmm and QEMU" if same else
               f"DIFFERENT: minivmm pc {a['pc_at_stop']:#x} {a['probe']}, qemu pc {b['pc_at_stop']:#x} {b['probe']}")
            + f" [{' '.join(a['probe'])}]")

    def rate(w, key_s, key_n):
        vals = [s[key_n] / s[key_s] for s in sessions.get(w, []) if s.get(key_s)]
        return median(vals)

    def dump_mib_s(w):
        return median([s["dump_bytes"] / MIB / s["dump_s"] for s in sessions.get(w, [])])

    res.add(Row("gdb stepi, steps/s", "{:.0f}", rate("minivmm", "stepi_s", "stepi_n"),
                rate("qemu", "stepi_s", "stepi_n"), higher_is_better=True,
                goal=">= 1.5x QEMU", judge=ratio_at_least(1.5),
                note=f"`stepi {counts['steps']}` in the flood loop; {runs} sessions each"))
    res.add(Row("gdb hbreak round trips/s", "{:.0f}", rate("minivmm", "trips_s", "trips_n"),
                rate("qemu", "trips_s", "trips_n"), higher_is_better=True,
                goal=">= 1.5x QEMU", judge=ratio_at_least(1.5),
                note=f"hbreak on the per-byte loop, `continue` x{counts['trips']} "
                     "(2 port exits of guest work between hits)"))
    res.add(Row("gdb memory read (32-bit, mostly zeros), MiB/s", "{:.2f}", dump_mib_s("minivmm"), dump_mib_s("qemu"),
                higher_is_better=True, goal=">= 4x QEMU", judge=ratio_at_least(4),
                note=f"`dump binary memory` of {counts['dump'] // MIB} MiB at 0x100000 "
                     "(paging off: virtual = physical in both)"))
    res.add(Row("gdb register reads/s", "{:.0f}", rate("minivmm", "regs_s", "regs_n"),
                rate("qemu", "regs_s", "regs_n"), higher_is_better=True,
                note=f"`maint flush register-cache` + `p $rip` x{counts['regs']}"))

    rounds = 5 if env.quick else 10
    lat = {}
    for w in who_list:
        try:
            lat[w] = ctrlc_latency(env, w, rounds)
        except RuntimeError as e:
            res.notes.append(f"ctrl-c/{w}: {e}")
    res.raw["ctrlc_s"] = lat
    m, q = median(lat.get("minivmm", [])), median(lat.get("qemu", []))
    res.add(Row("gdb Ctrl-C to stop, ms", "{:.2f}", m and m * 1e3, q and q * 1e3,
                goal="<= QEMU", judge=ratio_at_least(1.0),
                note=f"GDB/MI -exec-interrupt to *stopped, echo.elf spinning on the UART, {rounds} rounds"))


# ----------------------------------------------------------------------------------------------
# 4b. Memory reads of real data, as kernel developers do them

MEMREAD_GDB_SCRIPT = HERE / "bench" / "gdb_memread.py"
STANDIN_STUB = HERE / "bench" / "standin_stub.py"
# memread.elf (guests/memread.S): 16 MiB of LCG output at physical 16 MiB, then 16 MiB of
# zeros, both read through the guest's own page tables at Linux's direct-map addresses.
MEMREAD_DIRECT_MAP = 0xFFFF888000000000
MEMREAD_DATA = MEMREAD_DIRECT_MAP + 0x1000000
MEMREAD_ZEROS = MEMREAD_DIRECT_MAP + 0x2000000
MEMREAD_SIZE = 0x1000000
MEMREAD_SEED = 0x9E3779B97F4A7C15
LCG_MUL, LCG_INC = 6364136223846793005, 1442695040888963407


def memread_expected(size: int) -> bytes:
    """What memread.elf writes: qword n is x(n+1) of the LCG."""
    import struct
    x, m = MEMREAD_SEED, (1 << 64) - 1
    out = bytearray()
    pack = struct.Struct("<Q").pack
    for _ in range(size // 8):
        x = (x * LCG_MUL + LCG_INC) & m
        out += pack(x)
    return bytes(out)


def memread_vm(env: Env, who: str, port: int) -> subprocess.Popen:
    """memread.elf under `who`, GDB port open, running until it says it is ready."""
    if who == "minivmm":
        cmd = [env.minivmm, "--kernel", env.guest("memread.elf"), "--mem", "64",
               "--gdb", str(port), "--gdb-no-wait"]
    elif who == "QEMU 10":
        cmd = env.qemu_cmd(env.guests / "qemu-pvh" / "memread.elf", "qboot", 64,
                           "-gdb", f"tcp:127.0.0.1:{port}")
    else:
        cmd = env.qemu72_cmd(env.guests / "qemu-pvh" / "memread.elf", 64,
                             "-gdb", f"tcp:127.0.0.1:{port}")
    return spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def memread_reads(env: Env, tag: str, zeros: bool) -> list[tuple[str, int, int, Path]]:
    reads = [("data", MEMREAD_DATA, MEMREAD_DATA + MEMREAD_SIZE, env.tmp / f"{tag}-data.bin")]
    if zeros:
        reads.append(("zeros", MEMREAD_ZEROS, MEMREAD_ZEROS + MEMREAD_SIZE, env.tmp / f"{tag}-zeros.bin"))
    return reads


def memread_check(reads, expected: bytes, who: str) -> None:
    for name, _, _, path in reads:
        got = path.read_bytes()
        want = expected if name == "data" else bytes(MEMREAD_SIZE)
        if got != want:
            raise RuntimeError(f"{who}: the {name} read differs from what the guest wrote")
        path.unlink()


def memread_gdb(env: Env, port: int, reads) -> dict:
    outf = env.tmp / "memread-gdb.json"
    e = dict(os.environ, BENCH_PORT=str(port), BENCH_OUT=str(outf),
             BENCH_READS=";".join(f"{n}:{a:#x}:{b:#x}:{f}" for n, a, b, f in reads))
    if outf.exists():
        outf.unlink()
    r = run_timed([env.gdb, "-batch", "-nx", "-x", MEMREAD_GDB_SCRIPT], timeout=300, env=e)
    if not outf.exists():
        raise RuntimeError(f"gdb wrote no result: {r.err.decode(errors='replace')[-300:]}")
    out = json.loads(outf.read_text())
    if "error" in out:
        raise RuntimeError(f"gdb: {out['error']}")
    return {n: out[f"{n}_bytes"] / MIB / out[f"{n}_s"] for n, *_ in reads}


def memread_lldb(env: Env, port: int, reads) -> dict:
    """LLDB 14's embedded Python is broken in Debian 12 (no lldb module), so the reads are
    timed by `platform shell date` around them; the cost of one such command (two in a row)
    is taken off."""
    cmd = [env.lldb, "-b", "-o", f"gdb-remote 127.0.0.1:{port}",
           "-o", "platform shell date +MARK=%s.%N", "-o", "platform shell date +MARK=%s.%N"]
    for _, a, b, f in reads:
        cmd += ["-o", f"memory read --binary --force --outfile {f} {a:#x} {b:#x}",
                "-o", "platform shell date +MARK=%s.%N"]
    cmd += ["-o", "process detach"]
    r = run_timed(cmd, timeout=300)
    marks = [float(x) for x in re.findall(rb"^MARK=([0-9.]+)$", r.out, re.M)]
    if len(marks) != 2 + len(reads) or b"error:" in r.out + r.err:
        errors = [l for l in (r.out + r.err).decode(errors="replace").splitlines() if "error:" in l]
        raise RuntimeError("lldb: " + (errors[0].strip() if errors else f"exit {r.rc}"))
    cost = marks[1] - marks[0]
    return {n: MEMREAD_SIZE / MIB / max(marks[2 + i] - marks[1 + i] - cost, 1e-6)
            for i, (n, *_) in enumerate(reads)}


def bench_memread(env: Env, res: Results):
    if not env.gdb and not env.lldb:
        res.notes.append("memread: neither gdb nor lldb installed: skipped")
        return
    runs = 2 if env.quick else 5
    peers = ["minivmm"] + (["QEMU 10"] if env.qemu_kvm_ok and env.qboot else []) \
        + (["QEMU 7.2"] if env.qemu72_ok else [])
    expected = memread_expected(MEMREAD_SIZE)
    data_file = env.tmp / "memread-expected.bin"
    data_file.write_bytes(expected)
    # All VMs fill their memory at once (seconds where KVM emulates guest code), then halt.
    vms, ports = {}, {}
    try:
        for who in peers:
            ports[who] = free_port()
            vms[who] = memread_vm(env, who, ports[who])
        for who, p in vms.items():
            got = wait_for_output(p.stdout, b"memread: ready", 600)
            if b"memread: ready" not in got:
                raise RuntimeError(f"memread.elf under {who} never got ready: {got[-200:]!r}")
        clients = [c for c, ok in (("GDB", env.gdb), ("LLDB", env.lldb)) if ok]
        # (client, data kind) -> column -> rates
        rates: dict = {}
        def add(client, col, got):
            for kind, v in got.items():
                rates.setdefault((client, kind), {}).setdefault(col, []).append(v)
        cannot: set = set()  # (client, peer) pairs that failed once: not tried again
        for _ in range(runs):
            for who in peers:
                for client in clients:
                    if (client, who) in cannot:
                        continue
                    reads = memread_reads(env, "vm", zeros=True)
                    try:
                        got = (memread_gdb if client == "GDB" else memread_lldb)(env, ports[who], reads)
                        memread_check(reads, expected, f"{client} on {who}")
                        add(client, who, got)
                    except (RuntimeError, OSError) as e:
                        res.notes.append(f"memread/{client}/{who}: {e}")
                        cannot.add((client, who))
            # The ceiling: a stand-in stub with no VM behind it (hex `m` for both clients;
            # LLDB's binary `x` too, which minivmm may or may not answer).
            stand_ins = [("GDB", "stand-in hex m", [])] if env.gdb else []
            if env.lldb:
                stand_ins += [("LLDB", "stand-in hex m", []), ("LLDB", "stand-in binary x", ["--binary"])]
            for client, col, flags in stand_ins:
                port = free_port()
                stub = spawn([sys.executable, STANDIN_STUB, port, data_file, hex(MEMREAD_DATA), *flags],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                try:
                    if not wait_listening(port, stub, 60):
                        raise RuntimeError("the stand-in stub did not listen")
                    reads = memread_reads(env, "stub", zeros=False)
                    got = (memread_gdb if client == "GDB" else memread_lldb)(env, port, reads)
                    memread_check(reads, expected, f"{client} on the stand-in stub")
                    add(client, col, got)
                except (RuntimeError, OSError) as e:
                    res.notes.append(f"memread/{client}/{col}: {e}")
                finally:
                    kill_tree(stub)
    finally:
        for p in vms.values():
            kill_tree(p)
    res.raw["memread_mib_s"] = {f"{c} {k}": v for (c, k), v in rates.items()}
    cols = peers + ["stand-in hex m", "stand-in binary x"]
    rows = []
    for (client, kind), by in rates.items():
        med = {c: median(by.get(c, [])) for c in cols}
        q = med.get("QEMU 10")
        m = med.get("minivmm")
        rows.append([f"{client} {'16 MiB LCG data' if kind == 'data' else '16 MiB of zeros'}"]
                    + [fmt(med[c], "{:.1f}") for c in cols]
                    + [f"{m / q:.2f}x" if m and q else "-"])
        if kind == "data":
            res.add(Row(f"{client} memory read, real data, MiB/s", "{:.1f}", m, q,
                        higher_is_better=True,
                        goal=">= 4x QEMU" if client == "LLDB" else "client's ceiling",
                        judge=ratio_at_least(4) if client == "LLDB" else
                        (lambda r, c=med.get("stand-in hex m"): None if r.minivmm is None or c is None
                         else r.minivmm >= 0.9 * c),
                        note=f"memread.elf, long mode, 16 MiB at {MEMREAD_DATA:#x} (direct map); "
                             f"ceiling (stand-in stub, hex m): {fmt(med.get('stand-in hex m'), '{:.1f}')}"
                             + (f", binary x: {fmt(med.get('stand-in binary x'), '{:.1f}')}" if client == "LLDB" else "")
                             + " MiB/s; see the memory-read table"))
    res.tables.append(SideTable(
        f"memory reads, MiB/s: memread.elf in long mode, read at the direct map ({MEMREAD_DATA:#x}), "
        f"medians of {runs}; GDB `dump binary memory`, LLDB `memory read --binary --force`",
        cols + ["minivmm ÷ QEMU 10"], rows))
    res.notes.append("memory reads: every dump is checked byte for byte against the guest's LCG "
                     "(and zeros); the stand-in stub answers from a prebuilt buffer with no VM "
                     "behind it: the most a client gets from any stub speaking that way")


# ----------------------------------------------------------------------------------------------
# 5. A stock Linux kernel

LINUX_BANNER = b"Linux version"
LINUX_RUN_INIT = b"Run /init"
LINUX_MARKER = b"minivmm-init:"
# earlyprintk: the banner is printed when the kernel starts, not replayed when the console
# comes up much later.
LINUX_CMDLINE = "console=ttyS0 earlyprintk=serial,ttyS0 reboot=k panic=-1 cryptomgr.notests"
# QEMU stops a VM whose instruction KVM could not emulate and waits: nothing more will come.
QEMU_STUCK = b"KVM internal error"


def time_milestones(cmd, needles: list[bytes], timeout: float) -> tuple[dict, bytes, bytes]:
    """Runs cmd until the last needle shows on its stdout (or it exits, gets stuck, or times
    out); returns seconds from start to each needle seen, and stdout and stderr so far."""
    t0 = time.monotonic()
    p = spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = bytearray()
    def rd_err():
        while b := os.read(p.stderr.fileno(), 65536):
            err.extend(b)
    err_reader = threading.Thread(target=rd_err, daemon=True)
    err_reader.start()
    q: queue.Queue = queue.Queue()
    def rd():
        while b := os.read(p.stdout.fileno(), 65536):
            q.put((time.monotonic(), b))
        q.put((time.monotonic(), b""))
    threading.Thread(target=rd, daemon=True).start()
    out = bytearray()
    seen: dict = {}
    deadline = t0 + timeout
    try:
        while len(seen) < len(needles):
            if QEMU_STUCK in err:
                break
            try:
                t, b = q.get(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    break
                continue
            if not b:
                break
            out += b
            for n in needles:
                if n not in seen and n in out:
                    seen[n] = t - t0
    finally:
        kill_tree(p)
        err_reader.join(timeout=5)
    return seen, bytes(out), bytes(err)


def linux_files(env: Env) -> tuple[Path, Path]:
    r = subprocess.run([str(HERE / "fetch-linux.sh")], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("scripts/fetch-linux.sh failed (network needed the first time): "
                           + (r.stderr.strip().splitlines() or ["?"])[-1])
    linux = Path(r.stdout.strip())
    initrd = env.tmp / "initramfs.cpio.gz"
    subprocess.run([sys.executable, str(HERE / "mkinitramfs.py"), "--init",
                    str(env.guest("linux-init")), "--busybox", str(linux / "busybox"),
                    "-o", str(initrd)], check=True, capture_output=True)
    return linux / "vmlinuz", initrd


def bench_linux(env: Env, res: Results, full: bool):
    kernel, initrd = linux_files(env)
    emulating = res.raw.get("host", {}).get("emulating_kvm", False)
    if emulating:
        needles = [LINUX_BANNER] + ([LINUX_RUN_INIT] if full else [])
        timeout = 1800.0 if full else 600.0
    else:
        needles = [LINUX_BANNER, LINUX_RUN_INIT, LINUX_MARKER]
        timeout = 300.0
    m_cmd = [env.minivmm, "--kernel", kernel, "--initrd", initrd, "--cpus", "2", "--mem", "512",
             "--cmdline", LINUX_CMDLINE]
    m, m_out, m_err = time_milestones(m_cmd, needles, timeout)
    # QEMU gets exactly the command line the kernel saw under minivmm, host workarounds included.
    extra = re.search(rb"added '([^']*)'", m_err)
    cmdline = LINUX_CMDLINE + (" " + extra.group(1).decode() if extra else "")
    q = {}
    if env.qemu_kvm_ok and env.qboot:
        q_cmd = env.qemu_cmd(kernel, "qboot", 512, "-smp", "2", "-initrd", initrd,
                             "-append", cmdline)
        q, _, q_err = time_milestones(q_cmd, needles, timeout)
        if QEMU_STUCK in q_err:
            res.notes.append("linux/qemu: stopped by an instruction this host's KVM cannot "
                             "emulate (minivmm works around those): "
                             + q_err.decode(errors="replace").strip().splitlines()[0])
        elif LINUX_BANNER not in q:
            res.notes.append("linux/qemu: no banner: " + q_err.decode(errors="replace")[-200:])
    if LINUX_BANNER not in m:
        res.notes.append("linux/minivmm: no banner: " + m_err.decode(errors="replace")[-200:])
    res.raw["linux_s"] = {"minivmm": {k.decode(): v for k, v in m.items()},
                          "qboot": {k.decode(): v for k, v in q.items()}, "cmdline": cmdline}
    res.add(Row("Linux start to banner, s", "{:.1f}", m.get(LINUX_BANNER), q.get(LINUX_BANNER),
                note=f"{kernel.resolve().name} from scripts/fetch-linux.sh, 2 vCPUs, 512 MiB, "
                     f"cmdline '{cmdline}'; once each"))
    if LINUX_RUN_INIT in needles:
        res.add(Row("Linux start to `Run /init`, s", "{:.1f}", m.get(LINUX_RUN_INIT),
                    q.get(LINUX_RUN_INIT)))
    if LINUX_MARKER in needles:
        res.add(Row("Linux start to initramfs marker, s", "{:.1f}", m.get(LINUX_MARKER),
                    q.get(LINUX_MARKER)))
    else:
        res.notes.append("linux: the initramfs marker is not timed on this host: its KVM emulates "
                         "guest code and user-mode system calls fail there"
                         + ("" if full else " (--linux-full times `Run /init`, ~15 min each)"))


# ----------------------------------------------------------------------------------------------

def bench_core(env, res) -> None:
    """Core-file writing of a 1 GiB guest against QEMU's dump-guest-memory
    (scripts/bench/core_bench.py; this file's own name hides the scripts/bench package)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))
    import core_bench
    core_bench.bench(env, res, Row)


BENCHES = ["startup", "serial", "memory", "gdb", "memread", "core", "linux"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--minivmm", required=True, type=Path)
    ap.add_argument("--guests", required=True, type=Path)
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    ap.add_argument("--qemu72", default=str(QEMU72_DIR / "usr/bin/qemu-system-x86_64"),
                    help="QEMU 7.2 to compare with too (default: the one scripts/hwkvm/setup unpacks)")
    ap.add_argument("--qemu72-share", default=str(QEMU72_DIR / "usr/share/qemu"),
                    help="its firmware directory (-L)")
    ap.add_argument("--qemu-machine", default="pc",
                    help="QEMU machine type (default pc: it boots PVH with -kernel and has the "
                         "i8042 the guests reset through; microvm has no i8042)")
    ap.add_argument("--quick", action="store_true", help="fewer runs and smaller counts")
    ap.add_argument("--linux-full", action="store_true",
                    help="on an emulating host, also time Linux up to `Run /init` (~15 min each)")
    ap.add_argument("--only", action="append", default=[],
                    help=f"run only these (comma-separated; repeatable): {', '.join(BENCHES)}")
    ap.add_argument("--json", type=Path, help="also write every raw number here")
    args = ap.parse_args(argv)

    only = [x for o in args.only for x in o.split(",") if x]
    for o in only:
        if o not in BENCHES:
            ap.error(f"--only {o}: choose from {', '.join(BENCHES)}")
    selected = only or BENCHES

    if not args.minivmm.exists():
        print(f"bench: {args.minivmm} not found (run `cargo build --release`)", file=sys.stderr)
        return 2
    if not (args.guests / "reset-pvh.elf").exists():
        print(f"bench: no guests in {args.guests} (see guests/README.md)", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    res = Results()
    with tempfile.TemporaryDirectory(prefix="minivmm-bench-") as tmp:
        env = Env(minivmm=args.minivmm.resolve(), guests=args.guests.resolve(),
                  qemu=args.qemu, qboot=find_qboot(), qemu_kvm_ok=False,
                  gdb=shutil.which("gdb"), lldb=shutil.which("lldb"), quick=args.quick, machine=args.qemu_machine,
                  tmp=Path(tmp), qemu72=args.qemu72 if args.qemu72 and os.path.exists(args.qemu72) else None,
                  qemu72_share=args.qemu72_share)
        t_start = time.monotonic()
        try:
            host_notes(env, res)
            check_qemu(env, res)
            reset_med = None
            for name in selected:
                print(f"bench: {name} ...", file=sys.stderr, flush=True)
                t = time.monotonic()
                try:
                    if name == "startup":
                        reset_med = bench_startup(env, res)
                    elif name == "serial":
                        bench_serial(env, res, reset_med)
                    elif name == "memory":
                        bench_memory(env, res)
                    elif name == "gdb":
                        bench_gdb(env, res)
                    elif name == "memread":
                        bench_memread(env, res)
                    elif name == "core":
                        bench_core(env, res)
                    elif name == "linux":
                        bench_linux(env, res, args.linux_full)
                except (RuntimeError, OSError, ValueError, KeyError,
                        subprocess.CalledProcessError) as e:
                    res.notes.append(f"{name}: could not run: {e}")
                print(f"bench: {name} took {time.monotonic() - t:.1f} s", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            print("bench: interrupted", file=sys.stderr)
            return 130
        finally:
            kill_all()
        res.notes.append(f"bench took {time.monotonic() - t_start:.0f} s"
                         + (" (--quick)" if args.quick else ""))
    print_table(res)
    if args.json:
        args.json.write_text(json.dumps(
            {"raw": res.raw, "rows": [{"name": r.name, "minivmm": r.minivmm, "qemu_qboot": r.qboot,
                                       "qemu_seabios": r.seabios, "ratio": r.ratio(), "goal": r.goal}
                                      for r in res.rows], "notes": res.notes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
