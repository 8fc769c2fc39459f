# Runs inside GDB (gdb -batch -nx -x gdb_memread.py); driven by scripts/bench.py.
#
# Environment: BENCH_PORT, BENCH_OUT (JSON result file), BENCH_READS: a list of
# "name:start:end:file" separated by ";", each read with `dump binary memory`.
# Timed here, inside GDB: GDB's own work plus the remote protocol plus the stub.

import json
import os
import time

import gdb  # noqa: F401  (provided by GDB)

env = os.environ
out = {}
try:
    for cmd in ("set pagination off", "set confirm off", "set architecture i386:x86-64"):
        gdb.execute(cmd, to_string=True)
    gdb.execute("target remote 127.0.0.1:" + env["BENCH_PORT"], to_string=True)
    for spec in env["BENCH_READS"].split(";"):
        name, start, end, path = spec.split(":")
        t0 = time.perf_counter()
        gdb.execute("dump binary memory %s %s %s" % (path, start, end), to_string=True)
        out[name + "_s"] = time.perf_counter() - t0
        out[name + "_bytes"] = os.path.getsize(path)
    gdb.execute("detach", to_string=True)
except Exception as e:  # reported by bench.py
    out["error"] = "%s: %s" % (type(e).__name__, e)
with open(env["BENCH_OUT"], "w") as f:
    json.dump(out, f)
