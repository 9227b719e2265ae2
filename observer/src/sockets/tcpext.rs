//! TcpExt counters from /proc/net/netstat and the listen limits (being written).
