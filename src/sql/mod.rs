//! Reading SQL text the way Postgres's lexer and grammar read it, for the
//! few statements pgharbor must recognize: pure functions over `&str` and
//! `&[u8]`, no I/O and no session state.

pub mod drop_database;
pub mod lex;
pub mod listen;
pub(crate) mod parameters;
pub(crate) mod prepared_commands;
pub mod query_scan;
pub mod quote;
pub mod reset_all;
pub mod session_state;
pub mod temp_objects;
