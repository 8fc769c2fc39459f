# Runs inside GDB (gdb -batch -nx -x gdb_bench.py); driven by scripts/bench.py.
#
# Environment: BENCH_ELF, BENCH_PORT, BENCH_OUT (JSON result file), BENCH_STOP (address of the
# guest's hot loop), BENCH_PROBE (address for the sanity probe), BENCH_STEPS, BENCH_TRIPS,
# BENCH_REGS, BENCH_DUMP_START, BENCH_DUMP_END, BENCH_DUMP_FILE.
#
# Every measurement is timed here, inside GDB, so it covers GDB's own work plus the remote
# protocol plus the stub, which is what a user waits for.

import json
import os
import time

import gdb  # noqa: F401  (provided by GDB)

env = os.environ
out = {}


def run(cmd):
    return gdb.execute(cmd, to_string=True)


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


try:
    run("set pagination off")
    run("set confirm off")
    run("set height 0")
    run("file " + env["BENCH_ELF"])
    t = timed(lambda: run("target remote 127.0.0.1:" + env["BENCH_PORT"]))
    out["attach_s"] = t

    stop = int(env["BENCH_STOP"], 0)
    # Run to the guest's hot loop (QEMU first runs its firmware; minivmm starts at the entry).
    run("hbreak *%#x" % stop)
    run("continue")
    run("delete")
    out["pc_at_stop"] = int(gdb.parse_and_eval("$pc")) & 0xFFFFFFFFFFFFFFFF

    probe = int(env["BENCH_PROBE"], 0)
    out["probe"] = run("x/8xb %#x" % probe).split(":", 1)[1].split()

    # (a) single steps: one `stepi N` command, GDB steps N times without printing each.
    steps = int(env["BENCH_STEPS"])
    out["stepi_s"] = timed(lambda: run("stepi %d" % steps))
    out["stepi_n"] = steps

    # (b) breakpoint round trips: a hardware breakpoint on the hot loop, `continue` N times.
    trips = int(env["BENCH_TRIPS"])
    run("hbreak *%#x" % stop)

    def do_trips():
        for _ in range(trips):
            run("continue")

    out["trips_s"] = timed(do_trips)
    out["trips_n"] = trips
    out["pc_after_trips"] = int(gdb.parse_and_eval("$pc")) & 0xFFFFFFFFFFFFFFFF
    run("delete")

    # (c) memory read throughput.
    start = int(env["BENCH_DUMP_START"], 0)
    end = int(env["BENCH_DUMP_END"], 0)
    dump = env["BENCH_DUMP_FILE"]
    out["dump_s"] = timed(lambda: run("dump binary memory %s %#x %#x" % (dump, start, end)))
    out["dump_bytes"] = os.path.getsize(dump)

    # (d) register reads: drop GDB's cache so each read goes to the stub.
    nregs = int(env["BENCH_REGS"])

    def do_regs():
        for _ in range(nregs):
            run("maint flush register-cache")
            run("p $rip")

    out["regs_s"] = timed(do_regs)
    out["regs_n"] = nregs
except Exception as e:  # reported by bench.py
    out["error"] = "%s: %s" % (type(e).__name__, e)

with open(env["BENCH_OUT"], "w") as f:
    json.dump(out, f)
try:
    gdb.execute("kill")
except Exception:
    pass
