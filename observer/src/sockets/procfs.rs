//! /proc/net/tcp and /proc/net/tcp6 parser (being written).
