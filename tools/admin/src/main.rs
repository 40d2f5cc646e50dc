//! `rookery-admin`: the offline admin tool of a Rookery data directory.
//!
//! It verifies a data directory (log records against their checksums, the
//! index against the log, `meta.redb`), prints statistics, dumps one room's
//! history as JSON lines, exports a whole directory to a portable JSON-lines
//! file and imports such a file into a new directory (with any shard count),
//! salvages a shard whose log is damaged, compacts every log at once
//! (deleted text gone from disk), and rebuilds the indexes from the logs.
//! It also makes keys for the server API (`api-key`, no data directory),
//! asks a running server for an online backup (`backup`, over its server
//! API) and restores a backup into a new data directory (`restore`).
//!
//! It reads and writes the files directly. **Never run it against a data
//! directory that a live server has open**: stop the server first. (The
//! databases are locked by the server, so most commands fail cleanly, but
//! the log files are not.)
//!
//! Exit codes: 0 success; 1 the data has damage (`verify` found errors, or
//! another command could not read every record; its output covers what was
//! readable); 2 usage or I/O problems and refused operations.

mod apikey;
mod backup;
mod compact;
mod data;
mod dump;
mod export;
mod format;
mod import;
mod reindex;
mod stats;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Offline inspection, verification, export and import of a Rookery data
/// directory. Stop the server before running it: it must not touch a data
/// directory a live server has open.
#[derive(Parser, Debug)]
#[command(name = "rookery-admin", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Help text listing the exit codes.
const EXIT_CODES: &str = "Exit codes: 0 ok; 1 the data has damage (verify found errors, or a \
command could not read every record); 2 usage or I/O error, or a refused operation.\n\
Logging: RUST_LOG (default warn), to stderr.";

/// The subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// Checks every log record, the index against the log, and meta.redb.
    ///
    /// Prints per shard its segments, records, rooms and index checkpoint,
    /// then every error and note. Notes (a torn tail, an unindexed tail) are
    /// repaired by the next open and do not fail the check. Given a backup,
    /// it first reads every file back against the backup's manifest
    /// (length and CRC32C) and opens nothing for writing.
    Verify {
        /// The data directory, or a backup.
        data: PathBuf,
    },
    /// Asks a running server for an online backup (POST
    /// /api/backend/backup) and waits for it to finish. The server writes
    /// it under its --backup-dir, in a directory of the given name.
    Backup {
        /// The server's base URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        url: String,
        /// A file holding an API key with the `backup` scope.
        #[arg(long, conflicts_with = "key_env")]
        key_file: Option<PathBuf>,
        /// Read the API key from ROOKERY_API_KEY instead.
        #[arg(long)]
        key_env: bool,
        /// The backup's directory name under --backup-dir (default: the
        /// time, rookery-YYYYMMDD-HHMMSS, UTC).
        #[arg(long)]
        name: Option<String>,
    },
    /// Restores a backup into a new (or empty) data directory: checks every
    /// file of the backup first, copies them, then rebuilds each shard's
    /// index. Start the server on the directory afterwards.
    Restore {
        /// The backup (a directory with backup.json).
        backup: PathBuf,
        /// The data directory to create.
        #[arg(long)]
        to: PathBuf,
    },
    /// Prints segments, bytes, records, messages and rooms per shard and in
    /// total, plus the users and rooms of meta.redb.
    Stats {
        /// The data directory.
        data: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Prints one room's messages as JSON lines, in seq order, with edits and
    /// deletes applied (`body` is null for a deleted message).
    Dump {
        /// The data directory.
        data: PathBuf,
        /// Room id, or room name (a name made only of digits must be given
        /// by its id).
        #[arg(long)]
        room: String,
        /// Print only messages with a seq above this.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Writes the whole directory as JSON lines: a header, users (with their
    /// password hashes), rooms, members, read receipts, then every live log
    /// record of every shard in log order. Sessions are not exported.
    Export {
        /// The data directory.
        data: PathBuf,
        /// Output file (written through a temporary file, then renamed);
        /// stdout when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Creates a data directory from an export. The directory must not exist
    /// or be empty. The whole file is checked before anything is written.
    Import {
        /// The data directory to create.
        data: PathBuf,
        /// The export file.
        #[arg(long)]
        from: PathBuf,
        /// Shard count of the new directory (default: the export's).
        #[arg(long)]
        shards: Option<u32>,
        /// Segment file size of the new directory's logs, in bytes.
        #[arg(long, default_value_t = 64 << 20)]
        segment_bytes: u32,
    },
    /// Rewrites every shard's log now, as the server does in the
    /// background: appended segments in room order (superseded edits
    /// dropped), and every segment holding a deleted message's text, which
    /// then is in no file. Seals the active segments first.
    Compact {
        /// The data directory.
        data: PathBuf,
    },
    /// Deletes every shard's index and rebuilds it from the log (as an
    /// open does when the index is missing), printing the time per shard.
    Reindex {
        /// The data directory.
        data: PathBuf,
    },
    /// Makes a damaged shard openable: cuts its log at the first corruption,
    /// moves later segments to shard-K/salvaged/ and removes the index (the
    /// next open rebuilds it). Everything before the damage is kept.
    Salvage {
        /// The data directory.
        data: PathBuf,
        /// The shard to salvage.
        #[arg(long)]
        shard: u32,
    },
    /// Makes a key for the server API: prints the key (give it to the
    /// backend; it is shown once) and then the entry to append to the
    /// server's --api-keys-file (it holds only the key's SHA-256). Send the
    /// server SIGHUP to load it.
    ApiKey {
        /// The key's name, in the server's logs and errors.
        #[arg(long)]
        name: String,
        /// What it may do: publish, rooms, members, users, read, backup
        /// (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Its own rate (the server's default: 100).
        #[arg(long)]
        requests_per_s: Option<u32>,
    },
}

/// How a command that ran to the end judged the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Nothing wrong.
    Clean,
    /// The data has damage (exit code 1).
    Damaged,
}

impl Outcome {
    /// `Damaged` when `damaged` is set.
    fn from_damage(damaged: bool) -> Outcome {
        if damaged {
            Outcome::Damaged
        } else {
            Outcome::Clean
        }
    }
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Damaged) => ExitCode::from(1),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rookery-admin: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs one subcommand.
fn run(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Verify { data } => verify::verify(&data),
        Command::Backup {
            url,
            key_file,
            key_env,
            name,
        } => backup::backup(
            &url,
            &api_key(key_file.as_deref(), key_env)?,
            name.as_deref(),
        ),
        Command::Restore { backup, to } => backup::restore(&backup, &to),
        Command::Stats { data, json } => stats::stats(&data, json),
        Command::Dump { data, room, since } => dump::dump(&data, &room, since),
        Command::Export { data, out } => export::export(&data, out.as_deref()),
        Command::Import {
            data,
            from,
            shards,
            segment_bytes,
        } => import::import(
            &data,
            &from,
            import::Options {
                shards,
                segment_bytes,
            },
        ),
        Command::Salvage { data, shard } => verify::salvage(&data, shard),
        Command::Compact { data } => compact::compact(&data),
        Command::Reindex { data } => reindex::reindex(&data),
        Command::ApiKey {
            name,
            scopes,
            requests_per_s,
        } => {
            let (key, entry) = apikey::new_key(&name, &scopes, requests_per_s)?;
            println!(
                "key: {key}

# append to --api-keys-file:
{entry}"
            );
            Ok(Outcome::Clean)
        }
    }
}

/// The API key from `--key-file` or, with `--key-env`, `ROOKERY_API_KEY`
/// (never from the command line, which other users can list).
fn api_key(file: Option<&std::path::Path>, env: bool) -> anyhow::Result<String> {
    use anyhow::Context;
    let key = match (file, env) {
        (Some(f), _) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the API key from {}", f.display()))?,
        (None, true) => std::env::var("ROOKERY_API_KEY").context("ROOKERY_API_KEY")?,
        (None, false) => anyhow::bail!("give the API key with --key-file FILE or --key-env"),
    };
    let key = key.trim().to_string();
    if key.is_empty() {
        anyhow::bail!("the API key is empty");
    }
    Ok(key)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`).
fn init_tracing() {
    let quiet = rookery_storage::QUIET_LOG_DIRECTIVE
        .parse()
        .expect("valid directive");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
        .add_directive(quiet);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// True when the error is a closed stdout (`rookery-admin dump ... | head`).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
