#!/usr/bin/env python3
"""Builds minivmm's test initramfs: a gzip'd newc cpio with /init (minivmm's marker program),
/dev/console, mount points, and busybox as /bin/sh (for `minivmm.shell`).

Usage: scripts/mkinitramfs.py --init PATH [--busybox PATH] [--file DEST=SRC ...] -o OUT.cpio.gz

(--file adds more files, e.g. kernel modules for the hardware-virtualised test host.)

Written in Python so no root (mknod) is needed: device nodes are just cpio headers.
"""

import argparse
import gzip
import os
import stat
import sys

APPLETS = ["sh", "ls", "cat", "echo", "grep", "mount", "dmesg", "reboot", "poweroff", "uname", "ps"]


class Cpio:
    def __init__(self):
        self.out = bytearray()
        self.ino = 1

    def add(self, name, mode, data=b"", rdev=(0, 0)):
        namez = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0]
        self.ino += 1
        self.out += b"070701" + b"".join(b"%08x" % f for f in fields) + namez
        self.out += b"\0" * (-len(self.out) % 4)
        self.out += data
        self.out += b"\0" * (-len(self.out) % 4)

    def dir(self, name):
        self.add(name, stat.S_IFDIR | 0o755)

    def file(self, name, data, perm=0o755):
        self.add(name, stat.S_IFREG | perm, data)

    def symlink(self, name, target):
        self.add(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name, major, minor, perm=0o600):
        self.add(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self):
        self.add("TRAILER!!!", 0)
        return bytes(self.out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", required=True, help="the /init executable")
    p.add_argument("--busybox", help="a static busybox, installed as /bin/busybox with applets")
    p.add_argument("--file", action="append", default=[], metavar="DEST=SRC",
                   help="add SRC as DEST (a path inside the initramfs; its directories are made)")
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args()

    c = Cpio()
    for d in [".", "dev", "proc", "sys", "bin", "sbin", "tmp"]:
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    with open(args.init, "rb") as f:
        c.file("init", f.read())
    if args.busybox:
        with open(args.busybox, "rb") as f:
            c.file("bin/busybox", f.read())
        for applet in APPLETS:
            c.symlink("bin/" + applet, "busybox")
    made = set()
    for spec in args.file:
        dest, _, src = spec.partition("=")
        parts = dest.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in made and d not in ("dev", "proc", "sys", "bin", "sbin", "tmp"):
                c.dir(d)
                made.add(d)
        with open(src, "rb") as f:
            c.file("/".join(parts), f.read(), 0o644)
    data = gzip.compress(c.finish(), mtime=0)
    tmp = args.output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, args.output)


if __name__ == "__main__":
    sys.exit(main())
