//! The plumbing that Glowline's scheduler, workers and `glowctl` share: the
//! job store in Postgres (`store`), the RabbitMQ topology and publishing
//! (`broker`), S3 transfers (`s3`), configuration with environment
//! overrides (`config`), retry with backoff (`retry`), shutdown signalling
//! (`shutdown`), logging setup (`telemetry`), Prometheus metrics
//! (`metrics`) and the health and metrics endpoints (`ops`).
//!
//! Nothing here links libtorch: the scheduler depends on this crate only.

pub mod broker;
pub mod config;
pub mod db;
pub mod metrics;
pub mod ops;
pub mod retry;
pub mod s3;
pub mod shutdown;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
