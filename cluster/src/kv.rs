//! The link's JetStream key-value side: buckets opened once and kept by
//! the link's thread, reads and conditional writes, and watches that hand
//! every change of a bucket, in revision order, to a reader on another
//! thread.
//!
//! Invariant: a watch never skips a change. Its channel is bounded, and
//! when the reader is behind the watch waits (JetStream keeps the entries);
//! when the watch ends (NATS lost for long enough that JetStream dropped
//! its consumer) it starts again after the last revision it handed on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_lite::StreamExt;

use crate::error::{Error, Result};

/// Pause between two attempts while JetStream is not ready (electing its
/// leader) or a watch has to be started again.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Changes of a watched bucket waiting for their reader, at most; past it
/// the watch waits.
pub(crate) const CHANGES_MAX: usize = 4096;

/// A bucket's settings.
#[derive(Debug, Clone)]
pub struct BucketSpec {
    /// Its name (`[A-Za-z0-9_-]+`).
    pub name: String,
    /// Copies kept by the NATS cluster (1 to 5).
    pub replicas: usize,
    /// Entries older than this are dropped by JetStream; `None` keeps them.
    pub max_age: Option<Duration>,
}

/// One change of a watched bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvChange {
    /// The key changed.
    pub key: String,
    /// Its new value; `None` when it was deleted or purged.
    pub value: Option<Bytes>,
    /// The change's revision (the bucket's stream sequence): changes come
    /// in increasing revision order.
    pub revision: u64,
}

/// A key-value operation, carried out on the link's thread.
#[derive(Clone)]
pub(crate) enum KvOp {
    Get(String),
    Create(String, Bytes),
    Update(String, Bytes, u64),
    Put(String, Bytes),
    Delete(String),
}

/// What a [`KvOp`] gives back.
pub(crate) enum KvAnswer {
    /// `Get`: the value and its revision, if the key has a value.
    Value(Option<(Bytes, u64)>),
    /// `Create`, `Update`, `Put`: the new revision.
    Revision(u64),
    /// `Delete`.
    Done,
}

/// How long a JetStream call (a key-value read or write, a bucket lookup)
/// waits for its answer. async-nats waits 5 s by default; while a stream
/// elects a leader (a NATS server just restarted) that made a node's start
/// wait 10 s on two calls. Short calls retried go faster, and a client's
/// write fails sooner with `cluster_unavailable`.
const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// A JetStream context with [`JETSTREAM_TIMEOUT`].
pub(crate) fn context(client: async_nats::Client) -> jetstream::Context {
    let mut js = jetstream::new(client);
    js.set_timeout(JETSTREAM_TIMEOUT);
    js
}

/// The buckets the link has opened, by name.
pub(crate) type Stores = Arc<Mutex<HashMap<String, kv::Store>>>;

fn nats(e: impl std::fmt::Display) -> Error {
    Error::Nats(e.to_string())
}

/// The opened bucket `name`.
fn store(stores: &Stores, name: &str) -> Result<kv::Store> {
    let stores = stores.lock().map_err(|_| Error::Closed)?;
    stores
        .get(name)
        .cloned()
        .ok_or_else(|| Error::Nats(format!("bucket {name} is not open")))
}

/// Opens `spec`'s bucket, creating it if missing, retrying while
/// JetStream is not ready until `deadline`; keeps it for later commands.
pub(crate) async fn open(
    client: async_nats::Client,
    stores: Stores,
    spec: BucketSpec,
    deadline: Instant,
) -> Result<()> {
    let js = context(client);
    let mut last = String::new();
    while Instant::now() < deadline {
        match open_once(&js, &spec).await {
            Ok(store) => {
                let mut stores = stores.lock().map_err(|_| Error::Closed)?;
                stores.insert(spec.name.clone(), store);
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    Err(Error::Nats(format!("opening bucket {}: {last}", spec.name)))
}

/// The bucket, opened or created, with reads through its stream's leader.
///
/// A key-value bucket is made with direct gets allowed: any replica, the
/// lagging ones too, may answer a get. A node that was told "that key
/// exists" by a create must then be able to read it, and a session made on
/// one node must be found by another at once, so the bucket's stream is
/// switched to leader reads (a replica behind the leader answers nothing).
pub(crate) async fn open_once(js: &jetstream::Context, spec: &BucketSpec) -> Result<kv::Store> {
    let store = match js.get_key_value(&spec.name).await {
        Ok(store) => store,
        Err(_) => {
            let created = js
                .create_key_value(kv::Config {
                    bucket: spec.name.clone(),
                    history: 1,
                    num_replicas: spec.replicas,
                    max_age: spec.max_age.unwrap_or_default(),
                    ..Default::default()
                })
                .await;
            match created {
                Ok(store) => store,
                // Another node made it meanwhile (and may have switched
                // it to leader reads already: then its config differs
                // from the one asked for, and creating it fails).
                Err(e) => js.get_key_value(&spec.name).await.map_err(|_| nats(e))?,
            }
        }
    };
    if !store.stream.cached_info().config.allow_direct {
        return Ok(store);
    }
    let mut config = store.stream.cached_info().config.clone();
    config.allow_direct = false;
    js.update_stream(config).await.map_err(nats)?;
    // The store keeps the stream's config it was opened with.
    js.get_key_value(&spec.name).await.map_err(nats)
}

/// Tries of an operation that found no stream for its subject, at most:
/// the server it went to has not heard of the bucket's stream yet (just
/// made, or its placement moving), so nothing was written, and it is sent
/// again after a pause (25 ms, doubling: 0.8 s in all).
const NO_STREAM_TRIES_MAX: u32 = 6;

/// The first pause before such an operation is sent again.
const NO_STREAM_PAUSE: Duration = Duration::from_millis(25);

/// Why one try of an operation failed.
enum Tried {
    /// No stream took it: nothing was written; it may be tried again.
    NoStream(Error),
    /// Any other answer: final.
    Final(Error),
}

/// Carries out one operation on an opened bucket.
pub(crate) async fn apply(stores: &Stores, bucket: &str, op: KvOp) -> Result<KvAnswer> {
    let mut pause = NO_STREAM_PAUSE;
    for _ in 1..NO_STREAM_TRIES_MAX {
        match apply_once(stores, bucket, op.clone()).await {
            Ok(answer) => return Ok(answer),
            Err(Tried::Final(e)) => return Err(e),
            Err(Tried::NoStream(_)) => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
    apply_once(stores, bucket, op).await.map_err(|t| match t {
        Tried::NoStream(e) | Tried::Final(e) => e,
    })
}

/// Whether `e` (or what caused it) is a publish no stream took.
fn no_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(p) = c.downcast_ref::<jetstream::context::PublishError>() {
            if p.kind() == jetstream::context::PublishErrorKind::StreamNotFound {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

/// Whether `e` (or what caused it) says the key's revision was not the
/// one expected: a compare-and-set another write won. Told by the
/// server's error code, not only by the client's kind: a clustered
/// JetStream answers 10164 (`wrong last sequence`, no number), which
/// async-nats 0.52 files under `Other` (seen failing a cluster's start).
fn wrong_revision(e: &(dyn std::error::Error + 'static)) -> bool {
    use jetstream::ErrorCode;
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(u) = c.downcast_ref::<kv::UpdateError>() {
            if u.kind() == kv::UpdateErrorKind::WrongLastRevision {
                return true;
            }
        }
        if let Some(api) = c.downcast_ref::<jetstream::Error>() {
            let code = api.error_code();
            if code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                || code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
            {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

/// A failed try, as [`apply`] sorts it.
fn tried<E: std::error::Error + Send + Sync + 'static>(e: E) -> Tried {
    if no_stream(&e) {
        Tried::NoStream(nats(e))
    } else {
        Tried::Final(nats(e))
    }
}

/// One try of an operation.
async fn apply_once(
    stores: &Stores,
    bucket: &str,
    op: KvOp,
) -> std::result::Result<KvAnswer, Tried> {
    let store = store(stores, bucket).map_err(Tried::Final)?;
    match op {
        KvOp::Get(key) => {
            let entry = store.entry(key).await.map_err(tried)?;
            Ok(KvAnswer::Value(entry.and_then(|e| {
                (e.operation == kv::Operation::Put).then_some((e.value, e.revision))
            })))
        }
        // A create is an update expecting no revision (what the client's
        // `create` does too), written out here so that a publish no stream
        // took is told from the others and tried again.
        KvOp::Create(key, value) => match store.update(&key, value.clone(), 0).await {
            Ok(rev) => Ok(KvAnswer::Revision(rev)),
            Err(e) if wrong_revision(&e) => {
                match store.entry(&key).await.map_err(tried)? {
                    // A create whose acknowledgement was late or lost finds
                    // its own value: it took effect.
                    Some(found) if found.operation == kv::Operation::Put => {
                        if found.value == value {
                            Ok(KvAnswer::Revision(found.revision))
                        } else {
                            Err(Tried::Final(Error::KeyExists(key)))
                        }
                    }
                    // Deleted or purged: created again at that revision.
                    Some(found) => match store.update(&key, value, found.revision).await {
                        Ok(rev) => Ok(KvAnswer::Revision(rev)),
                        Err(e) if wrong_revision(&e) => Err(Tried::Final(Error::KeyExists(key))),
                        Err(e) => Err(tried(e)),
                    },
                    None => Err(Tried::Final(Error::KeyExists(key))),
                }
            }
            Err(e) => Err(tried(e)),
        },
        KvOp::Update(key, value, revision) => match store.update(&key, value, revision).await {
            Ok(rev) => Ok(KvAnswer::Revision(rev)),
            Err(e) if wrong_revision(&e) => Err(Tried::Final(Error::Conflict(key))),
            Err(e) => Err(tried(e)),
        },
        KvOp::Put(key, value) => store
            .put(key, value)
            .await
            .map(KvAnswer::Revision)
            .map_err(tried),
        KvOp::Delete(key) => store
            .delete(key)
            .await
            .map(|()| KvAnswer::Done)
            .map_err(tried),
    }
}

/// Hands every change of `bucket` (its current entries first) to `sink`,
/// until the reader is gone. `ready` hears whether the first watch
/// started.
pub(crate) async fn watch(
    stores: Stores,
    bucket: String,
    sink: flume::Sender<KvChange>,
    ready: flume::Sender<Result<()>>,
) {
    let mut after = 0u64;
    let mut ready = Some(ready);
    loop {
        let started = match store(&stores, &bucket) {
            Ok(store) if after == 0 => store.watch_with_history(">").await.map_err(nats),
            Ok(store) => store.watch_all_from_revision(after + 1).await.map_err(nats),
            Err(e) => Err(e),
        };
        if let Some(ready) = ready.take() {
            let failed = started.as_ref().err().map(|e| Error::Nats(e.to_string()));
            let _ = ready.send(failed.map_or(Ok(()), Err));
            if started.is_err() {
                return;
            }
        }
        match started {
            Ok(mut changes) => {
                while let Some(entry) = changes.next().await {
                    let Ok(entry) = entry else { break };
                    after = entry.revision;
                    let change = KvChange {
                        value: (entry.operation == kv::Operation::Put).then_some(entry.value),
                        key: entry.key,
                        revision: entry.revision,
                    };
                    if sink.send_async(change).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(bucket, error = %e, "watching a bucket failed; retrying"),
        }
        if sink.is_disconnected() {
            return;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};

    /// The classification [`apply`] retries on, pinned to how the client's
    /// errors wrap a publish's (an upgrade of async-nats that stops
    /// carrying it would fail here, not in a cluster).
    #[test]
    fn a_publish_no_stream_took_is_told_from_other_failures() {
        let no_stream = || PublishError::new(PublishErrorKind::StreamNotFound);
        let update = kv::UpdateError::from(no_stream());
        assert!(matches!(tried(update), Tried::NoStream(_)));
        let put = kv::PutError::with_source(kv::PutErrorKind::Ack, no_stream());
        assert!(matches!(tried(put), Tried::NoStream(_)));
        let wrong = kv::UpdateError::from(PublishError::new(PublishErrorKind::WrongLastSequence));
        assert!(matches!(tried(wrong), Tried::Final(_)));
        let timed_out = kv::UpdateError::from(PublishError::new(PublishErrorKind::TimedOut));
        assert!(matches!(tried(timed_out), Tried::Final(_)));
    }

    /// A compare-and-set another write won is told by the server's code
    /// as well as by the client's kind: 10164 (what a clustered JetStream
    /// answers) reaches us as `Other`.
    #[test]
    fn a_lost_compare_and_set_is_told_by_either_code() {
        let api = |code: u32| -> jetstream::Error {
            let text =
                format!(r#"{{"code":400,"err_code":{code},"description":"wrong last sequence"}}"#);
            serde_json::from_str(&text).expect("an API error")
        };
        let wrapped = |code| {
            kv::UpdateError::from(PublishError::with_source(
                PublishErrorKind::Other,
                api(code),
            ))
        };
        assert!(wrong_revision(&wrapped(10164)));
        assert!(wrong_revision(&wrapped(10071)));
        let kind = kv::UpdateError::from(PublishError::new(PublishErrorKind::WrongLastSequence));
        assert!(wrong_revision(&kind));
        assert!(!wrong_revision(&wrapped(10059)));
        let timed_out = kv::UpdateError::from(PublishError::new(PublishErrorKind::TimedOut));
        assert!(!wrong_revision(&timed_out));
        // Told apart from a missing stream, which is retried.
        assert!(matches!(tried(wrapped(10164)), Tried::Final(_)));
    }
}
