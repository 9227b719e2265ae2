//! The one seam between the model and its views: each view takes the model's items through [`Sink`] and only
//! reads them.

use crate::model::analyzer::Item;

/// A view of the model's items: text or JSON lines, a pcapng file, later the TUI and metrics.
pub trait Sink {
    /// What stops the view (a write error).
    type Error;

    /// Takes one item.
    fn item(&mut self, item: &Item<'_>) -> Result<(), Self::Error>;

    /// Writes out what it has buffered.
    fn flush(&mut self) -> Result<(), Self::Error>;
}
