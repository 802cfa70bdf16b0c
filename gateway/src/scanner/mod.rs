//! Scanner bridges: chain stages backed by external scanning daemons.

pub mod clamd;
