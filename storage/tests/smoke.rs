mod common;
use common::*;
use rookery_storage::*;

#[test]
fn append_then_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    run(move || async move {
        let store = open(&cfg);
        let shard = store.open_shard(0).await.unwrap();
        for i in 1..=100u64 {
            let a = shard
                .append_message(5, 1, &format!("c{i}"), 1000 + i, &format!("hello {i}"))
                .await
                .unwrap();
            assert_eq!(
                a,
                Appended::New {
                    seq: i,
                    ts_ms: 1000 + i
                }
            );
        }
        let page = shard.history(5, Cursor::latest(10)).await.unwrap();
        let seqs: Vec<u64> = page.items.iter().map(|i| i.seq()).collect();
        assert_eq!(seqs, (91..=100).rev().collect::<Vec<_>>());
        assert_eq!(page.items[0].body(), Some("hello 100"));
        shard.close().await.unwrap();
        drop(shard);
        let shard = store.open_shard(0).await.unwrap();
        assert_eq!(shard.last_seq(5), 100);
        let page = shard.history(5, Cursor::after(0, 200)).await.unwrap();
        assert_eq!(page.items.len(), 100);
        assert_eq!(page.items[99].body(), Some("hello 100"));
        shard.close().await.unwrap();
    });
}
