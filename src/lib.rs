//! order-service: the order management of a shop, as one binary over embedded SQLite,
//! with its events relayed to RabbitMQ through a transactional outbox.
//!
//! See README.md (ARCHITECTURE) for the threads and the data flow.

pub mod app;
pub mod clock;
pub mod config;
pub mod domain;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod orders;
pub mod products;
pub mod queue;
pub mod redact;
pub mod relay;
pub mod store;
pub mod systemd;
pub mod threads;
