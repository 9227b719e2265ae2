//! observer's agent: loads the kernel programs, reads their records, and renders what the wire and the
//! kernel's sockets do.
//!
//! Data flows one way, and imports point the same way: [`sys`] (the kernel and the OS) -> [`model`] (pure
//! analysis) -> [`view`] (formatting); [`table`] prints the socket table; [`cmd`] wires them for each
//! subcommand and [`cli`] parses the command line.

pub mod cli;
pub mod cmd;
pub mod model;
pub mod sys;
pub mod table;
pub mod view;
