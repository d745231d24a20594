//! Drivers that run Glowline's real binaries under stress and say what
//! came out: `chaos` (jobs through faults, then an audit of every promise of
//! docs/pipeline.md) and `bench-load` (submissions per second and where a
//! job's time goes).
//!
//! They are programs rather than tests: they restart the machine's shared
//! Postgres and RabbitMQ (`chaos`), or measure speed (`bench-load`), neither
//! of which belongs in `cargo test`. They live in their own crate, apart
//! from `glowctl`, because they depend on the test kit and on process
//! control, which the client that users install has no use for; and they
//! never link libtorch, since the workers they drive are separate
//! processes.
//!
//! The parts: [`stack`] starts the processes on an isolated corner of the
//! services, [`services`] restarts the shared ones, [`submit`] sends jobs,
//! [`audit`] checks the outcome and [`measure`] turns times into figures.

pub mod audit;
pub mod measure;
pub mod services;
pub mod stack;
pub mod submit;
