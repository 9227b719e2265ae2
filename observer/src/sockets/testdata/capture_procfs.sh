#!/usr/bin/env bash
# Captures the procfs/tcpext fixtures beside this script from a namespace it builds (run as root):
#   proc_tcp.txt, proc_tcp6.txt   /proc/net/tcp and tcp6 with a full accept queue, half-open request socks,
#                                 ESTABLISHED with queued bytes, keep-alive and retransmit timers, FIN_WAIT2,
#                                 CLOSE_WAIT, TIME_WAIT (also an orphaned FIN_WAIT2), SYN_SENT, IPv6 and mapped
#   netstat_antoe.txt             `netstat -antoe` run on exactly those bytes (the files are bind-mounted over
#                                 its /proc/<pid>/net), so the unit tests compare against netstat's own reading
#   proc_netstat.txt, nstat.txt   /proc/net/netstat after the overflows, and `nstat -asz` on those bytes
# Traffic stays on the namespace's loopback.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ns=obs-capture-$$
work=$(mktemp -d)
cleanup() {
    [[ -n ${scenario:-} ]] && kill "$scenario" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" -6 addr add fd00:1:2::3/64 dev lo nodad
ip netns exec "$ns" nft -f - <<'NFT'
table inet capture {
    chain out {
        type filter hook output priority 0;
        # The client's final ACK (and every later pure ACK) to 8081: the listener keeps half-open request socks.
        tcp dport 8081 tcp flags & (syn | ack | fin | rst) == ack drop
        # Data to 8083 never arrives: the sender keeps Send-Q and a retransmit timer.
        tcp dport 8083 tcp flags & psh == psh drop
        # SYNs to 8099 vanish: SYN_SENT.
        tcp dport 8099 drop
    }
}
NFT

ip netns exec "$ns" python3 - >"$work/scenario.out" 2>&1 <<'PY' &
import socket, time, sys
from socket import AF_INET, AF_INET6, SOCK_STREAM, SOL_SOCKET, SO_REUSEADDR, SO_KEEPALIVE, IPPROTO_TCP, SHUT_WR
keep = []

def listener(fam, addr, port, backlog, v6only=None):
    s = socket.socket(fam, SOCK_STREAM)
    s.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    s.bind((addr, port))
    s.listen(backlog)
    keep.append(s)
    return s

def client(fam, dst, port, src=None, block=True):
    c = socket.socket(fam, SOCK_STREAM)
    if src:
        c.bind((src, 0))
    if block:
        c.connect((dst, port))
    else:
        c.setblocking(False)
        c.connect_ex((dst, port))
    keep.append(c)
    return c

def accept(l):
    a, _ = l.accept()
    keep.append(a)
    return a

# Full accept queue: backlog 1 holds two connections; the third one's SYN is dropped (ListenOverflows).
full = listener(AF_INET, "127.0.0.1", 8080, 1)
client(AF_INET, "127.0.0.1", 8080)
client(AF_INET, "127.0.0.1", 8080)
client(AF_INET, "127.0.0.1", 8080, block=False)
# Half-open request socks (the final ACK is dropped), IPv4 and IPv6.
listener(AF_INET, "0.0.0.0", 8081, 16)
client(AF_INET, "127.0.0.1", 8081, src="127.1.2.3")
client(AF_INET, "127.0.0.1", 8081, src="127.1.2.3")
listener(AF_INET6, "::1", 8081, 16)
client(AF_INET6, "::1", 8081)
# ESTABLISHED with unread bytes on both sides; the client has keep-alive on.
l3 = listener(AF_INET, "127.0.0.1", 8082, 8)
c = client(AF_INET, "127.0.0.1", 8082)
c.setsockopt(SOL_SOCKET, SO_KEEPALIVE, 1)
c.setsockopt(IPPROTO_TCP, socket.TCP_KEEPIDLE, 1000)
a = accept(l3)
c.send(b"x" * 1000)
a.send(b"y" * 500)
# Unacknowledged bytes: the data segments are dropped, so Send-Q stays and the retransmit timer runs.
l4 = listener(AF_INET, "127.0.0.1", 8083, 8)
c = client(AF_INET, "127.0.0.1", 8083)
accept(l4)
c.send(b"z" * 3000)
# TIME_WAIT (client closes first, then the server), FIN_WAIT2/CLOSE_WAIT (half close), orphaned FIN_WAIT2.
l5 = listener(AF_INET, "127.0.0.1", 8084, 8)
c = client(AF_INET, "127.0.0.1", 8084)
a = accept(l5)
c.close(); time.sleep(0.2); a.close()
c = client(AF_INET, "127.0.0.1", 8084)
accept(l5)
c.shutdown(SHUT_WR)
c = client(AF_INET, "127.0.0.1", 8084)
accept(l5)
c.close()
# SYN_SENT.
client(AF_INET, "127.0.0.1", 8099, block=False)
# IPv6: dual-stack listener with a v6 and a v4-mapped connection; a v6 TIME_WAIT on a global address.
l6 = listener(AF_INET6, "::", 8090, 8, v6only=0)
client(AF_INET6, "::1", 8090)
accept(l6)
client(AF_INET, "127.0.0.1", 8090)
accept(l6)
l7 = listener(AF_INET6, "fd00:1:2::3", 8091, 8)
c = client(AF_INET6, "fd00:1:2::3", 8091, src="fd00:1:2::3")
a = accept(l7)
c.close(); time.sleep(0.2); a.close()
print("ready", flush=True)
time.sleep(600)
PY
scenario=$!
for _ in $(seq 100); do grep -q ready "$work/scenario.out" && break; sleep 0.1; done
grep -q ready "$work/scenario.out" || { cat "$work/scenario.out"; exit 1; }
# Let timers run and a few retransmissions happen.
sleep 3

ip netns exec "$ns" cat /proc/net/tcp >"$here/proc_tcp.txt"
ip netns exec "$ns" cat /proc/net/tcp6 >"$here/proc_tcp6.txt"
ip netns exec "$ns" cat /proc/net/netstat >"$here/proc_netstat.txt"
mkdir "$work/net"
cp "$here/proc_tcp.txt" "$work/net/tcp"
cp "$here/proc_tcp6.txt" "$work/net/tcp6"
cp "$here/proc_netstat.txt" "$work/net/netstat"
ip netns exec "$ns" cat /proc/net/snmp >"$work/net/snmp"
ip netns exec "$ns" cat /proc/net/snmp6 >"$work/net/snmp6"
# netstat and nstat read /proc/net/..., which is /proc/<own pid>/net: cover that directory with the fixtures.
on_fixtures() { unshare -m sh -c 'mount --make-rprivate / && mount --bind "$0" /proc/$$/net && exec "$@"' "$work/net" "$@"; }
on_fixtures netstat -antoe >"$here/netstat_antoe.txt"
on_fixtures env NSTAT_HISTORY="$work/nstat.hist" nstat -asz >"$here/nstat.txt"
echo "captured into $here"
