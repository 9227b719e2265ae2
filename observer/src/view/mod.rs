//! Everything that formats: text lines, JSON, pcapng; each view takes the model's items through [`sink::Sink`].

pub mod lines;
pub mod names;
pub mod notes;
pub mod pcapng;
pub mod render;
pub mod sink;
pub mod summary;
