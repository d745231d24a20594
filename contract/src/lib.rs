//! Glowline's job contract, defined once for every side: the job spec that
//! `glow render` runs locally and workers run from the queue (`spec`), and
//! the statuses, queue names and messages of the job system (`queue`).
//!
//! This crate holds types and validation only: no I/O, no queue or
//! database client, so that both the libtorch side and the scheduler can use it.

pub mod queue;
pub mod spec;
