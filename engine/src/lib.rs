//! # rookery-engine
//!
//! Thread-per-core shards, room ownership, cross-core fan-out with lossless
//! backpressure, presence, and the embed API (see `../shared/DESIGN.md`,
//! "The path of one message").
//!
//! **Not built yet.** This crate is a placeholder in the workspace so that
//! the dependency direction server → engine → storage is fixed from the
//! start; it exposes nothing but the storage it will build on. Until the
//! engine lands, embedders can use [`rookery_storage`] directly on a glommio
//! executor.

pub use rookery_storage as storage;
