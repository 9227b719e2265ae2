//! sock_diag netlink client (being written).
