//! Code generated from the vendor headers; regenerate, never edit by hand.

#[rustfmt::skip]
pub(crate) mod procaddr;

#[rustfmt::skip]
pub(crate) mod errors;

#[rustfmt::skip]
pub(crate) mod prototypes;
