//! The library half of the `veil` command: what other clients (the Python extension) share
//! with it, so that nothing about answers or local scoring is written twice.

pub mod consumer;
pub mod jobfile;
pub mod predict;
pub mod views;
