//! The line view: each item as one text or JSON line (a segment's followed by the analysis lines it completes).

use std::io::{self, Write};

use crate::model::analyzer::Item;
use crate::view::render::Renderer;
use crate::view::sink::Sink;

/// Writes each item's line to `out`, through one reused buffer.
#[derive(Debug)]
pub struct Lines<W: Write> {
    renderer: Renderer,
    out: W,
    /// The line being written: a data segment's line allocates nothing once it has room.
    line: String,
}

impl<W: Write> Lines<W> {
    /// Lines formatted by `renderer`, written to `out`.
    pub fn new(renderer: Renderer, out: W) -> Self {
        Lines {
            renderer,
            out,
            line: String::new(),
        }
    }

    /// The writer, after the last line.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Sink for Lines<W> {
    type Error = io::Error;

    fn item(&mut self, item: &Item<'_>) -> io::Result<()> {
        self.line.clear();
        self.renderer.write_item(&mut self.line, item);
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
