# Sourced by the fixture capture scripts (sockets/testdata/capture_procfs.sh, table/testdata/capture.sh): a
# namespace with its loopback up, an IPv6 address on it and nft rules that keep sockets still (half-open request
# socks on 8081, unacknowledged data on 8083, SYN_SENT to 8099); a Python scenario, given on stdin, with
# listener/client/accept helpers that holds its sockets until the script ends; and `on_fixtures`, which runs a
# tool on captured /proc bytes. Traffic stays on the namespace's loopback.
set -euo pipefail
work=$(mktemp -d)
cleanup() {
    [[ -n ${scenario:-} ]] && kill "$scenario" 2>/dev/null || true
    [[ -n ${ns:-} ]] && ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# scenario_namespace TAG IPV6: creates namespace obs-TAG-<pid> (in $ns) with IPV6/64 on its loopback.
scenario_namespace() {
    ns=obs-$1-$$
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" -6 addr add "$2/64" dev lo nodad
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
}

# start_scenario <<'PY' ... PY: runs the Python statements on stdin in $ns, after the helpers below, and waits
# until they are done (the sockets stay open until the script ends).
start_scenario() {
    {
        cat <<'PY'
import socket, time
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

PY
        cat
        printf '\nprint("ready", flush=True)\ntime.sleep(600)\n'
    } >"$work/scenario.py"
    ip netns exec "$ns" python3 "$work/scenario.py" >"$work/scenario.out" 2>&1 &
    scenario=$!
    for _ in $(seq 100); do grep -q ready "$work/scenario.out" && break; sleep 0.1; done
    grep -q ready "$work/scenario.out" || { cat "$work/scenario.out"; exit 1; }
}

# on_fixtures CMD...: runs CMD with /proc/net (which is /proc/<own pid>/net) covered by $work/net.
on_fixtures() { unshare -m sh -c 'mount --make-rprivate / && mount --bind "$0" /proc/$$/net && exec "$@"' "$work/net" "$@"; }
