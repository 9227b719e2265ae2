//! One module per subcommand: builds the sources, the analysis and the output, runs the loop, maps errors to
//! exit statuses.

pub mod compare;
pub mod exit;
pub mod live;
pub mod netstat;
pub mod queues;
pub mod watch;
