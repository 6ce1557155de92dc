//! cairn: a declarative, content-hashed, incremental data-flow pipeline for
//! deep-learning experiments.
//!
//! The engine reads `pipeline.toml` ([`spec`]), checks it into a DAG
//! ([`dag`]), computes a content-derived key for each stage ([`key`]), and
//! runs only the stages whose key has no entry in the content-addressed
//! cache ([`cache`], [`runner`]). It knows stage kinds only through the
//! [`kind::StageKind`] trait; kinds that need libtorch run in the separate
//! `cairn-worker` process ([`worker`]), so this crate never links it.

pub mod canon;
pub mod digest;
pub mod env;
pub mod formats;
pub mod key;
pub mod kind;
pub mod worker;
pub mod cache;
pub mod dag;
pub mod exec;
pub mod executor;
pub mod external;
pub mod kinds;
pub mod plan;
pub mod remote;
pub mod runner;
pub mod shell;
pub mod spec;
pub mod timestamp;
pub mod artifacts;
pub mod history;
pub mod lock;
pub mod memory;
