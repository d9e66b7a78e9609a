//! Integration tests: the worker in-process (and as a process) against the real RabbitMQ and a
//! real moto. Each test gets its own queue and exchange names and its own moto payer account
//! with its own organization, so tests run in parallel without seeing each other. `deploy`
//! checks the deployment material against the code and needs neither.

mod binary;
mod bounds;
mod check;
mod connections;
mod contention;
mod credentials;
mod deploy;
mod disruptive;
mod docs;
mod existing;
mod explain;
mod faults;
mod fixtures;
mod gate;
mod layers;
mod lifecycle;
mod malformed;
mod observability;
mod orders;
mod payers;
mod replay;
mod retries;
mod safety;
mod scale;
mod support;
mod topology;
mod waits;
