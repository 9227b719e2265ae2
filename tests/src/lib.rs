//! Helpers for observer's kernel and end-to-end tests.
