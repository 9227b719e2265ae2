//! Everything that talks to the kernel or the OS and returns plain data.

pub mod capture;
pub mod fault;
pub mod neigh;
pub mod preflight;
pub mod privileges;
pub mod rtnl;
pub mod sockets;
pub mod sockprogs;
pub mod watchdog;
