//! The one integration test binary: every module drives a real `order-service` process.

mod support;

mod backup;
mod broker;
mod broker_trouble;
mod relay;

mod cancel_status;
mod concurrency;
mod create;
mod edge;
mod errors;
mod hardening;
mod idempotency;
mod import_sqlite;
mod migrations_pg;
mod offline;
mod operations;
mod product_answers;
mod products;
mod read;
mod restart;
mod scale_out;
mod storage;
mod systemd_boot;
