//! pgharbor's integration tests, one binary (built and linked once):
//! each module is one area, run against a real PostgreSQL the support
//! module starts. `cargo test --test it MODULE::` runs one area.

mod support;

mod access_rules;
mod auth_query;
mod auth_secrets;
mod backend_pid;
mod cancel;
mod cli;
mod client_errors;
mod conformance;
mod copy;
mod deploy;
mod drivers;
mod encryption_requests;
mod failover;
mod fallback_database;
mod idle_timeouts;
mod layering;
mod limits;
mod listen;
mod listen_extended;
mod listen_hub;
mod listen_multi;
mod login_failures;
mod login_fidelity;
mod login_timeout;
mod observability;
mod peers_dns;
mod pool_metrics;
mod pooling;
mod prepared;
mod prepared_sql;
mod prometheus;
mod reload;
mod resilience;
mod scram_passthrough;
mod server_lifecycle;
mod tcp_options;
mod temp_objects;
mod timeouts;
mod tls_clients;
mod tls_servers;
mod transaction;
mod upgrade;
