//! Embedding Rookery: start an engine, subscribe, post from two threads,
//! read the live events and the history back, shut down.
//!
//! `cargo run -p rookery-engine --example embed [DATA_DIR]`

use rookery_engine::{Cursor, Engine, EngineConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("rookery-embed-{}", std::process::id()))
        });
    let mut cfg = EngineConfig::new(&dir);
    cfg.storage.segment_bytes_max = 4 << 20;
    let engine = Engine::start(cfg)?;
    let room = 1;
    let first_new = engine.last_seq(room).wait()? + 1;
    let sub = engine.subscribe(room, Some(first_new - 1)).wait()?;

    let posters: Vec<_> = ["alice", "bob"]
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                for n in 0..3 {
                    let ack = engine
                        .post(
                            room,
                            i as u64 + 1,
                            &format!("{name}-{n}"),
                            &format!("{name} says {n}"),
                        )
                        .wait()
                        .expect("post");
                    println!("{name}: posted seq {}", ack.seq);
                }
            })
        })
        .collect();
    for p in posters {
        p.join().expect("poster thread");
    }
    for _ in 0..6 {
        let event = sub.recv()?;
        println!("live  {}", event.json());
    }
    let page = engine.history(room, Cursor::latest(6)).wait()?;
    for m in page.messages.iter().rev() {
        println!(
            "history seq {} from {}: {}",
            m.seq,
            m.sender,
            m.body.as_deref().unwrap_or("(deleted)")
        );
    }
    drop(sub);
    engine.shutdown()?;
    println!("data in {}", dir.display());
    Ok(())
}
