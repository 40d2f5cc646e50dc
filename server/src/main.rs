//! `rookery`: the chat server binary.
//!
//! **Not built yet.** The HTTP API, the WebSocket protocol, accounts and
//! metrics arrive with the server issue; this binary says so and exits with
//! status 2 rather than pretend to serve. The storage it will run on is
//! usable today: see `rookery-admin` and `rookery-bench storage`.

fn main() {
    eprintln!(
        "rookery {}: the chat server (HTTP + WebSocket) is not built yet.\n\
         What exists today: the storage engine (crate rookery-storage),\n\
         `rookery-admin` (verify, stats, dump, export, import, salvage) and\n\
         `rookery-bench storage` (Rookery storage vs SQLite).",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
