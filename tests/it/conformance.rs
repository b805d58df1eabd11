//! Differential conformance: protocol conversations played against Postgres
//! directly and through pgharbor (session mode, and transaction mode with
//! `session_state = "pin"` over a pool smaller than the clients), every
//! reply each client receives compared. Hand-written cases in
//! `conformance/cases.rs`, random conversations in `conformance/generate.rs`.

#[path = "conformance/cases.rs"]
mod cases;
#[path = "conformance/conversation.rs"]
mod conversation;
#[path = "conformance/generate.rs"]
mod generate;
#[path = "conformance/runner.rs"]
mod runner;
#[path = "conformance/startup_settings.rs"]
mod startup_settings;
#[path = "conformance/wire.rs"]
mod wire;
