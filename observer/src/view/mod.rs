//! Everything that formats: text lines, JSON, pcapng; each view takes the model's items through [`sink::Sink`].

pub mod lines;
pub mod pcapng;
pub mod render;
pub mod sink;
