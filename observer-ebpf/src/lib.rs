//! Library target only so that `observer` can list this crate as a build dependency (see its build.rs).
#![no_std]
