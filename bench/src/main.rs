//! `rookery-bench`: Rookery's yardstick.
//!
//! - `rookery-bench storage`: Rookery's storage against SQLite (WAL,
//!   `synchronous=FULL`, one batching writer thread) doing the same job with
//!   the same guarantee, in one run on one machine.
//! - `rookery-bench engine`: the engine in process (no network): fan-out
//!   throughput and latency per scenario, shard count and durability.
//! - `rookery-bench idle`: a running server's memory per idle, authenticated,
//!   joined WebSocket connection.
//! - `rookery-bench load`: the network load generator (k6-style stages,
//!   open-loop sends, delivery latency, loss accounting, thresholds).
//! - `rookery-bench compare`: one scenario against Rookery and the Node ws
//!   and Socket.IO baselines, side by side.
//! - `rookery-bench directory` and `search`: the user directory's search
//!   at a million users, message search at ten million messages;
//!   `directory-load`: the directory over HTTP while the server carries
//!   chat.

#![recursion_limit = "256"]

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod abuse;
mod backup;
mod cluster;
mod compare;
mod directory;
mod directory_load;
mod engine;
mod http_client;
mod idle;
mod load;
mod search;
mod sink;
mod sqlite_store;
mod storage;
mod webhooks;

#[derive(Parser)]
#[command(
    name = "rookery-bench",
    version,
    about = "Benchmarks for Rookery and its baselines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Durable appends, history pages and recovery: Rookery storage vs SQLite.
    Storage(storage::Args),
    /// The engine in process: posts/s, delivered events/s, post→deliver latency.
    Engine(engine::Args),
    /// Memory per idle WebSocket connection of a running server.
    Idle(idle::Args),
    /// Load-test a chat server over WebSocket: stages, open-loop sends,
    /// delivery latency, loss accounting, thresholds.
    Load(load::Args),
    /// The same load scenario against Rookery, Node ws and Socket.IO, side
    /// by side with ratios.
    Compare(compare::CompareArgs),
    /// A normal load alone and then beside abusive clients (pipelining,
    /// never reading, login and join/leave floods): p99, loss, peak RSS.
    Abuse(abuse::AbuseArgs),
    /// A normal load alone and then with a webhook to a built-in receiver:
    /// chat p99 of both, the webhook's lag, nothing missing.
    Webhooks(webhooks::WebhooksArgs),
    /// Online backup: seconds per GB, and chat's p99 while backups run.
    Backup(backup::BackupArgs),
    /// The user directory's search at a million users: p50/p99 per kind
    /// of query.
    Directory(directory::Args),
    /// The user directory over HTTP at a million users, while a normal
    /// load runs: p50/p99 per kind of query, chat's p99 beside it.
    DirectoryLoad(directory_load::DirectoryLoadArgs),
    /// Message search at ten million messages: indexing and rebuild
    /// rates, p50/p99 per kind of query.
    Search(search::Args),
}

fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "warn".into())
        .add_directive(rookery_storage::QUIET_LOG_DIRECTIVE.parse()?);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Storage(args) => storage::run(args),
        Command::Abuse(args) => abuse::run(args),
        Command::Webhooks(args) => webhooks::run(args),
        Command::Backup(args) => backup::run(args),
        Command::Directory(args) => directory::run(args),
        Command::DirectoryLoad(args) => directory_load::run(args),
        Command::Search(args) => search::run(args),
        Command::Engine(args) => engine::run(args),
        Command::Idle(args) => idle::run(args),
        Command::Load(args) => load::run(args),
        Command::Compare(args) => compare::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
