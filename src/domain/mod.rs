//! The pure domain: Connect requests, business-model resolution, AWS naming rules, outcomes.
//!
//! Nothing here does I/O, is async, or knows an SDK type.

pub mod account_model;
pub mod arn;
pub mod bounded;
pub mod email;
pub mod ids;
pub mod model;
pub mod names;
pub mod order;
pub mod outcome;
pub mod password;
pub mod progress;
