//! observer agent library.
