#!/usr/bin/env python3
"""Captures the sock_diag fixtures of diag.rs from the running kernel, with ss (iproute2) as the client.

Run as root from this directory: `python3 diag_capture.py`. It makes a network namespace, opens a listener with
queued connections, an established pair with unread data and keep-alive, one with uneven window scales, a
TIME_WAIT socket, an IPv6 listener with a native and a v4-mapped connection, and a half-open request sock
(nftables drops the client's final ACK), then records with strace the bytes `ss -tanoei` sends and receives, and
what ss printed from them:

  diag_dump_inet.bin / diag_dump_inet6.bin  the answer datagrams of the AF_INET / AF_INET6 dumps, concatenated
  diag_dump.ss.txt                         ss's own output for the same answers
  diag_req_sport.bin                        the request of `ss -tan 'sport >= :6000 and sport <= :6000'` (AF_INET)
"""

import os
import re
import socket
import subprocess
import sys
import time

NS = "obs-diag-capture"
HERE = os.path.dirname(os.path.abspath(__file__))


def strace_io(args):
    """Runs ss under strace; returns ss's stdout and [(syscall, bytes)] for each sendmsg/recvmsg with data."""
    trace = subprocess.run(
        ["strace", "-o", "/dev/stderr", "-e", "trace=sendmsg,recvmsg", "-e", "write=all", "-e", "read=all"] + args,
        capture_output=True, text=True, check=True)
    calls = []
    for line in trace.stderr.splitlines():
        m = re.match(r"^(sendmsg|recvmsg)\(", line)
        if m:
            calls.append([m.group(1), bytearray(), "MSG_PEEK" in line])
            continue
        # A dump line: " | 00010  02 06 00 00 ff 0f 00 00  00 00 ...  ascii |", 16 bytes in columns 10..59.
        if re.match(r"^ \| [0-9a-f]{5}  ", line) and calls:
            calls[-1][1] += bytes.fromhex(line[10:59].replace(" ", ""))
    return trace.stdout, [(name, bytes(data)) for name, data, peek in calls if data and not peek]


def inside():
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["nft", "-f", "-"], check=True, input=(
        "table inet diagcap {\n chain out {\n type filter hook output priority 0;\n"
        " tcp dport 6000 tcp flags & (syn | ack | fin | rst) == ack drop\n }\n}\n"), text=True)
    keep = []
    lst = socket.socket()
    lst.bind(("127.0.0.1", 5000))
    lst.listen(7)
    client = socket.create_connection(("127.0.0.1", 5000))
    server, _ = lst.accept()
    client.send(b"x" * 100)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    keep += [lst, client, server]
    # A small receive buffer set before the handshake gives this client window scale 0 (ss: wscale:10,0).
    small = socket.socket()
    small.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    small.connect(("127.0.0.1", 5000))
    keep += [small, lst.accept()[0]]
    # TIME_WAIT: the client closes first, the server after reading the end of stream.
    tw_client = socket.create_connection(("127.0.0.1", 5000))
    tw_server, _ = lst.accept()
    tw_client.close()
    tw_server.recv(1)
    tw_server.close()
    # Two connections left in the accept queue, one with unread data.
    for data in (b"", b"queued"):
        c = socket.create_connection(("127.0.0.1", 5000))
        c.send(data)
        keep.append(c)
    lst6 = socket.socket(socket.AF_INET6)
    lst6.bind(("::", 5001))
    lst6.listen(3)
    keep += [lst6, socket.create_connection(("::1", 5001)), socket.create_connection(("127.0.0.1", 5001))]
    keep += [lst6.accept()[0], lst6.accept()[0]]
    lst_half = socket.socket()
    lst_half.bind(("127.0.0.1", 6000))
    lst_half.listen(4)
    half = socket.socket()
    half.setblocking(False)
    half.connect_ex(("127.0.0.1", 6000))
    keep += [lst_half, half]
    time.sleep(0.5)

    out, calls = strace_io(["ss", "-tanoei"])
    dumps = {}
    family = None
    for name, data in calls:
        if name == "sendmsg":
            family = {2: "inet", 10: "inet6"}[data[16]]
            dumps[family] = b""
        else:
            dumps[family] += data
    for family, data in dumps.items():
        with open(os.path.join(HERE, f"diag_dump_{family}.bin"), "wb") as f:
            f.write(data)
    # Keep only the rows and the info lines, not the column padding ss adds for the terminal width.
    with open(os.path.join(HERE, "diag_dump.ss.txt"), "w") as f:
        f.write("".join(line.rstrip() + "\n" for line in out.splitlines()))

    _, calls = strace_io(["ss", "-tan", "sport >= :6000 and sport <= :6000"])
    with open(os.path.join(HERE, "diag_req_sport.bin"), "wb") as f:
        f.write(calls[0][1])


if __name__ == "__main__":
    if sys.argv[1:] == ["--inside"]:
        inside()
    else:
        subprocess.run(["ip", "netns", "add", NS], check=True)
        try:
            subprocess.run(["ip", "netns", "exec", NS, sys.executable, os.path.abspath(__file__), "--inside"],
                           check=True)
        finally:
            subprocess.run(["ip", "netns", "del", NS], check=True)
