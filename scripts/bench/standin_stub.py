#!/usr/bin/env python3
"""A stand-in GDB stub with no VM behind it: the ceiling a debugger allows for memory reads.

    standin_stub.py PORT DATA BASE [--binary]

Serves one connection on 127.0.0.1:PORT. Memory at virtual address BASE.. is the file DATA
(everything else reads as zeros). Replies are put together from 4 KiB blocks encoded (hex,
or escaped binary) and checksummed before the connection is accepted, so the stub costs next
to nothing per packet (a Python sum() over a 128 KiB reply would cost milliseconds) and what
remains is the client's own time. `x` (binary reads, LLDB's form: the bytes with `}` escapes) is answered
only with --binary; otherwise it gets the empty reply (unsupported) and the client falls
back to `m`, as with a stub that has no `x`. Registers read as zeros. Python 3.11 standard
library only; used by scripts/bench.py.
"""

import socket
import sys

PACKET_SIZE = 0x20000  # as minivmm's: 128 KiB packets


def checksum(b: bytes) -> bytes:
    return b"%02x" % (sum(b) & 0xFF)


def escape_binary(b: bytes) -> bytes:
    for c in (b"}", b"#", b"$", b"*"):
        b = b.replace(c, b"}" + bytes([c[0] ^ 0x20]))
    return b


BLOCK = 4096


class Memory:
    """DATA at BASE, each 4 KiB block encoded both ways with its checksum sum, ahead of time."""

    def __init__(self, data: bytes, base: int):
        self.data, self.base = data, base
        self.blocks = {True: [], False: []}  # hexed -> [(encoded, byte sum)]
        for i in range(0, len(data), BLOCK):
            for hexed in (True, False):
                enc = self.encode(data[i:i + BLOCK], hexed)
                self.blocks[hexed].append((enc, sum(enc)))

    @staticmethod
    def encode(b: bytes, hexed: bool) -> bytes:
        return b.hex().encode() if hexed else escape_binary(b)

    def reply(self, addr: int, length: int, hexed: bool) -> bytes:
        off, end = addr - self.base, addr - self.base + length
        if off < 0 or end > len(self.data):
            return self.encode(bytes(length), hexed)
        parts, total, pos = [], 0, off
        while pos < end:
            b = pos // BLOCK
            stop = min((b + 1) * BLOCK, end)
            if pos == b * BLOCK and stop == (b + 1) * BLOCK:
                enc, s = self.blocks[hexed][b]
            else:
                enc = self.encode(self.data[pos:stop], hexed)
                s = sum(enc)
            parts.append(enc)
            total += s
            pos = stop
        payload = b"".join(parts)
        return b"$" + payload + b"#" + b"%02x" % (total & 0xFF)


def main() -> int:
    port, data_path, base = int(sys.argv[1]), sys.argv[2], int(sys.argv[3], 0)
    binary = "--binary" in sys.argv[4:]
    memory = Memory(open(data_path, "rb").read(), base)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    no_ack = False
    buf = b""

    def send(payload: bytes):
        conn.sendall(b"$" + payload + b"#" + checksum(payload))

    while True:
        while True:
            i = buf.find(b"$")
            j = buf.find(b"#", i)
            if i >= 0 and j >= 0 and len(buf) >= j + 3:
                break
            if b"\x03" in buf:
                buf = buf.replace(b"\x03", b"")
                send(b"S02")
            chunk = conn.recv(1 << 16)
            if not chunk:
                return 0
            buf += chunk
        pkt = buf[i + 1:j]
        buf = buf[j + 3:]
        if not no_ack:
            conn.sendall(b"+")
        if pkt.startswith(b"qSupported"):
            send(b"PacketSize=%x;QStartNoAckMode+" % PACKET_SIZE)
        elif pkt == b"QStartNoAckMode":
            send(b"OK")
            no_ack = True
        elif pkt == b"?":
            send(b"S05")
        elif pkt == b"g":
            send(b"00" * (16 * 8 + 8 + 4 + 6 * 4))
        elif pkt[:1] == b"p":
            send(b"00" * 8)
        elif pkt[:1] in (b"m", b"x"):
            a, n = pkt[1:].split(b",")
            addr, length = int(a, 16), int(n, 16)
            if pkt[:1] == b"m":
                conn.sendall(memory.reply(addr, length, True))
            elif binary:
                # LLDB probes with `x0,0` and takes `OK` as "binary reads supported".
                if length:
                    conn.sendall(memory.reply(addr, length, False))
                else:
                    send(b"OK")
            else:
                send(b"")
        elif pkt[:1] == b"H" or pkt == b"QThreadSuffixSupported" or pkt == b"QListThreadsInStopReply":
            send(b"OK")
        elif pkt == b"qC":
            send(b"QC1")
        elif pkt == b"qfThreadInfo":
            send(b"m1")
        elif pkt == b"qsThreadInfo":
            send(b"l")
        elif pkt == b"qAttached":
            send(b"1")
        elif pkt[:1] == b"D":
            send(b"OK")
            return 0
        elif pkt[:1] == b"k":
            return 0
        else:
            send(b"")


if __name__ == "__main__":
    sys.exit(main())
