//! aws-account-worker: turns CloudBlue Connect purchase requests for AWS into AWS member
//! accounts. The order's trip: receive → parse → resolve → provision → report → settle.
//!
//! - [`domain`]: the pure part (Connect request, business model, naming rules, outcomes);
//! - [`pipeline`]: parse → resolve → provision → report, ending in an `Outcome`;
//! - [`provision`] over the [`aws`] traits, with a [`slots`] limit on creations in progress;
//! - [`report`]: the result events;
//! - [`broker`]: topology, consuming, publishing with confirms, and `settle`, the one place
//!   that maps an outcome to ack, retry or dead-letter;
//! - [`config`]: settings; [`app`]: wiring and the run loop; [`observability`]: metrics and
//!   health endpoints;
//! - [`check`]: the `check` command, which tries a deployment's configuration, broker and AWS;
//! - [`explain`]: the `explain` command, which resolves an order file as `run` would, offline;
//! - [`replay`]: the `replay` command, which moves dead-lettered orders back for processing.

pub mod app;
pub mod aws;
pub mod broker;
pub mod check;
pub mod config;
pub mod domain;
pub mod explain;
pub mod lifecycle;
pub mod locks;
pub mod observability;
pub mod pipeline;
pub mod provision;
pub mod replay;
pub mod report;
pub mod retry;
pub mod settle;
pub mod slots;
pub mod startup;
