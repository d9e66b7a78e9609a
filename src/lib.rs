//! aws-account-worker: turns CloudBlue Connect purchase requests for AWS into AWS member
//! accounts. The order's trip: receive → parse → resolve → provision → report → settle.

pub mod domain;
