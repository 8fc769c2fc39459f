#!/usr/bin/env python3
"""Core-file benchmark: minivmm's `monitor dump` against QEMU's `dump-guest-memory`.

    python3 scripts/bench/core_bench.py --minivmm target/release/minivmm \\
        --guests "$(scripts/guests-dir --release)" [--runs 5] [--mem 1024] [--json OUT]

The same guest on both VMMs: echo.elf (waiting for a line on COM1) with --mem MiB of RAM,
in two states:
  idle  nothing in RAM but the guest's few pages (most of a CI guest's RAM is untouched)
  full  an initrd of random bytes filling 3/4 of RAM (loaded by each VMM before the guest
        runs), so most pages hold data
Each VMM is asked for a core while the guest waits: minivmm through its GDB stub (a raw
`qRcmd` of `monitor dump PATH`, the VM stopped by the attach), QEMU through QMP
(`dump-guest-memory` to a file, paging off: QEMU's plain ELF core, the format crash and gdb
read). The time is from the request to the core being on disk: minivmm fsyncs its core before
it answers, QEMU does not, so QEMU's file is fsynced after its answer (the time to its answer
alone is reported too). MiB/s = guest RAM / that time (medians of --runs). Size on disk is the file's
allocated blocks (minivmm leaves zero pages as holes). Both write into --dir (default: a
temporary directory), the same filesystem.

Standalone (prints a table, exit status 0 unless the bench cannot run), or from
scripts/bench.py through `bench(env, res, Row)`, which adds its rows to bench.py's table.
Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY = b"echo: ready"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(proc: subprocess.Popen, needle: bytes, timeout: float) -> bytes:
    """Reads proc's stdout until needle appears (or it exits, or time runs out)."""
    got = b""
    end = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    while needle not in got and time.monotonic() < end:
        chunk = proc.stdout.read(4096)
        if chunk:
            got += chunk
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.01)
    if needle not in got:
        raise RuntimeError(f"no {needle!r} from {proc.args[0]}: {got[-300:]!r}")
    return got


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def on_disk(path: Path) -> int:
    return os.stat(path).st_blocks * 512


# --- minivmm: GDB remote protocol, just enough for qRcmd ---

def rle_decode(body: str) -> str:
    """Undoes the protocol's run-length encoding: `X*c` is X repeated ord(c) - 29 more times
    (a stub may send "3333" as "3* ")."""
    out = []
    i = 0
    while i < len(body):
        if body[i] == "*" and out and i + 1 < len(body):
            out.append(out[-1] * (ord(body[i + 1]) - 29))
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


class Rsp:
    def __init__(self, port: int, timeout: float = 30):
        end = time.monotonic() + timeout
        while True:
            try:
                self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
                break
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.02)
        self.buf = b""

    def send(self, payload: str) -> None:
        body = payload.encode()
        self.s.sendall(b"$" + body + b"#" + f"{sum(body) & 0xff:02x}".encode())

    def packet(self) -> str:
        """The next packet's payload, acknowledged."""
        while True:
            while b"#" not in self.buf or len(self.buf) - self.buf.index(b"#") < 3:
                chunk = self.s.recv(65536)
                if not chunk:
                    raise RuntimeError("minivmm closed the GDB connection")
                self.buf += chunk
            start = self.buf.find(b"$")
            if start < 0:
                self.buf = b""
                continue
            hash_at = self.buf.index(b"#", start)
            body = self.buf[start + 1:hash_at]
            self.buf = self.buf[hash_at + 3:]
            self.s.sendall(b"+")
            return rle_decode(body.decode(errors="replace"))

    def command(self, payload: str) -> str:
        self.send(payload)
        return self.packet()

    def monitor(self, cmd: str) -> str:
        """qRcmd: console output (O packets) until OK."""
        self.send("qRcmd," + cmd.encode().hex())
        text = ""
        while True:
            p = self.packet()
            if p == "OK":
                return text
            if p.startswith("O") and p != "OK":
                text += bytes.fromhex(p[1:]).decode(errors="replace")
            elif p.startswith("E"):
                raise RuntimeError(f"monitor {cmd}: {p}")


def minivmm_dump(minivmm: Path, guests: Path, mem: int, initrd: Path | None, core: Path) -> float:
    port = free_port()
    cmd = [str(minivmm), "--kernel", str(guests / "echo.elf"), "--mem", str(mem),
           "--gdb", str(port), "--gdb-no-wait"]
    if initrd:
        cmd += ["--initrd", str(initrd)]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "off"})
    try:
        wait_for(p, READY, 120)
        rsp = Rsp(port)
        rsp.command("?")  # the attach stops the VM
        t0 = time.perf_counter()
        out = rsp.monitor(f"dump {core}")
        dt = time.perf_counter() - t0
        if "core file written" not in out:
            raise RuntimeError(f"minivmm's monitor dump: {out!r}")
        return dt
    finally:
        stop(p)


# --- QEMU: QMP ---

def qmp_command(f, name: str, **args):
    f.write(json.dumps({"execute": name, "arguments": args} if args else {"execute": name}) + "\n")
    f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r:
            return r["return"]
        if "error" in r:
            raise RuntimeError(f"QMP {name}: {r['error']}")


def qemu_dump(qemu: str, guests: Path, mem: int, initrd: Path | None, core: Path,
              sock: Path, bios: str | None = None) -> tuple[float, float]:
    """Seconds to QMP's answer, and to the core being fsynced after it."""
    cmd = [qemu, *(["-bios", bios] if bios else []), "-enable-kvm", "-M", "pc", "-m", str(mem), "-kernel",
           str(guests / "qemu-pvh" / "echo.elf"), "-display", "none", "-nodefaults",
           "-no-user-config", "-no-reboot", "-serial", "stdio", "-monitor", "none",
           "-qmp", f"unix:{sock},server=on,wait=off"]
    if initrd:
        cmd += ["-initrd", str(initrd)]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    try:
        wait_for(p, READY, 120)
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(sock))
        f = s.makefile("rw")
        json.loads(f.readline())  # greeting
        qmp_command(f, "qmp_capabilities")
        qmp_command(f, "stop")  # as minivmm's attach does
        t0 = time.perf_counter()
        qmp_command(f, "dump-guest-memory", paging=False, protocol=f"file:{core}")
        dt = time.perf_counter() - t0
        s.close()
        # minivmm fsyncs its core before it answers; this is QEMU's time to the same point.
        fd = os.open(core, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return dt, time.perf_counter() - t0
    finally:
        stop(p)


def holds(path: Path, needle: bytes) -> bool:
    """Whether the file contains needle (the check that the initrd really is in RAM)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return m.find(needle) >= 0


def make_initrd(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))


def run(minivmm: Path, guests: Path, tmp: Path, runs: int = 5, mem: int = 1024,
        qemu: str | None = None, bios: str | None = None) -> dict:
    """Measures both VMMs in both guest states; returns {state: {vmm: {...}}}."""
    qemu = qemu or shutil.which("qemu-system-x86_64")
    initrd = tmp / "core-bench-initrd.bin"
    make_initrd(initrd, mem * 3 // 4)
    with open(initrd, "rb") as f:
        f.seek(1 << 20)
        marker = f.read(64)
    results: dict = {}
    try:
        for state, rd in (("idle", None), ("full", initrd)):
            results[state] = {}
            vmms = [("minivmm", None)] + ([("qemu", qemu)] if qemu else [])
            for who, q in vmms:
                times, synced, disk, size = [], [], [], []
                for i in range(runs):
                    core = tmp / f"core-bench-{who}-{state}-{i}.core"
                    if who == "minivmm":
                        dt = ds = minivmm_dump(minivmm, guests, mem, rd, core)
                    else:
                        dt, ds = qemu_dump(q, guests, mem, rd, core, tmp / "core-bench-qmp.sock",
                                           bios)
                    times.append(dt)
                    synced.append(ds)
                    if rd and i == 0 and not holds(core, marker):
                        raise RuntimeError(f"{who}'s core of the full guest lacks the initrd's bytes")
                    disk.append(on_disk(core))
                    size.append(core.stat().st_size)
                    core.unlink()
                med = statistics.median(times)
                med_synced = statistics.median(synced)
                results[state][who] = {
                    "seconds": times, "median_s": med, "mib_per_s": mem / med,
                    "synced_seconds": synced, "synced_mib_per_s": mem / med_synced,
                    "on_disk_mib": statistics.median(disk) / (1 << 20),
                    "file_mib": statistics.median(size) / (1 << 20),
                }
                print(f"core_bench: {state} {who}: {mem / med:.0f} MiB/s "
                      f"(median of {runs}: {med * 1000:.0f} ms; on disk (fsynced) "
                      f"{mem / med_synced:.0f} MiB/s), "
                      f"{statistics.median(disk) / (1 << 20):.1f} MiB on disk",
                      file=sys.stderr)
    finally:
        initrd.unlink(missing_ok=True)
    return results


def bench(env, res, row_cls, mem: int = 1024) -> None:
    """scripts/bench.py's "core" benchmark: rows into its table (QEMU with qboot when it has
    it, in the qboot column)."""
    runs = 3 if env.quick else 5
    qemu = env.qemu if env.qemu_kvm_ok else None
    r = run(env.minivmm, env.guests, env.tmp, runs, mem, qemu, env.qboot)
    res.raw["core"] = r
    for state, what in (("idle", "idle"), ("full", "3/4 full")):
        m, q = r[state]["minivmm"], r[state].get("qemu")
        res.add(row_cls(f"core write, {mem} MiB {what}, MiB/s", "{:.0f}", m["synced_mib_per_s"],
                        q["synced_mib_per_s"] if q else None, higher_is_better=True,
                        note=f"echo.elf{' + random initrd of 3/4 of RAM' if state == 'full' else ''}; "
                             f"minivmm `monitor dump`, QEMU QMP dump-guest-memory + fsync "
                             f"(without the fsync QEMU: {q['mib_per_s']:.0f} MiB/s); "
                             f"medians of {runs}" if q else f"medians of {runs}"))
        res.add(row_cls(f"core on disk, {mem} MiB {what}, MiB", "{:.1f}", m["on_disk_mib"],
                        q["on_disk_mib"] if q else None,
                        note="allocated blocks (minivmm leaves zero pages as holes)"))


def print_table(res: dict, mem: int, runs: int) -> None:
    rows = []
    for state, what in (("idle", "idle"), ("full", "3/4 full")):
        r = res.get(state, {})
        m, q = r.get("minivmm"), r.get("qemu")
        ratio = f"{m['synced_mib_per_s'] / q['synced_mib_per_s']:.2f}x" if m and q else "-"
        rows.append([f"core write, {mem} MiB guest {what}, MiB/s",
                     f"{m['synced_mib_per_s']:.0f}" if m else "-",
                     f"{q['synced_mib_per_s']:.0f}" if q else "-", ratio])
        ratio = f"{m['mib_per_s'] / q['mib_per_s']:.2f}x" if m and q else "-"
        rows.append([f"  QEMU not fsynced, MiB/s",
                     f"{m['mib_per_s']:.0f}" if m else "-",
                     f"{q['mib_per_s']:.0f}" if q else "-", ratio])
        ratio = f"{q['on_disk_mib'] / m['on_disk_mib']:.2f}x" if m and q and m["on_disk_mib"] else "-"
        rows.append([f"core on disk, {mem} MiB guest {what}, MiB",
                     f"{m['on_disk_mib']:.1f}" if m else "-",
                     f"{q['on_disk_mib']:.1f}" if q else "-", ratio])
    head = ["benchmark", "minivmm", "qemu", "ratio"]
    w = [max(len(x[i]) for x in rows + [head]) for i in range(4)]
    for line in [head, ["-" * n for n in w]] + rows:
        print("  ".join(c.ljust(w[0]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(line)))
    print(f"ratio: times better minivmm is (>1 = minivmm better). Medians of {runs} runs; "
          "echo.elf waiting for input; 'full': a random initrd of 3/4 of RAM. minivmm: "
          "`monitor dump` over the GDB stub (answers once the core is fsynced), zero pages left as "
          "holes; QEMU: QMP `dump-guest-memory` (paging off), then fsync of its file; the "
          "'not fsynced' row stops QEMU's clock at QMP's answer.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minivmm", type=Path, required=True)
    ap.add_argument("--guests", type=Path, required=True)
    ap.add_argument("--qemu", default=None, help="qemu-system-x86_64 (default: from PATH)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mem", type=int, default=1024, help="guest RAM in MiB (default 1024)")
    ap.add_argument("--dir", type=Path, default=None, help="where the cores go (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = ap.parse_args()
    if not (a.guests / "echo.elf").exists() or not (a.guests / "qemu-pvh" / "echo.elf").exists():
        print(f"core_bench: {a.guests} has no echo.elf and qemu-pvh/echo.elf "
              "(scripts/guests-dir --release names the directory)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="core-bench-", dir=a.dir))
    try:
        res = run(a.minivmm.resolve(), a.guests.resolve(), tmp, a.runs, a.mem, a.qemu)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(res, a.mem, a.runs)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
