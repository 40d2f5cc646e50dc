//! The NATS link: one thread with a current-thread tokio runtime that owns
//! the `async-nats` client; every other thread (a glommio shard, a test, a
//! blocking tool) talks to it through flume channels, which work from any
//! executor.
//!
//! Invariant: every tokio object (the client, JetStream contexts, the
//! subscriptions) is created, used and dropped on the link's thread; the
//! link's messages to one subject leave in the order they were handed to
//! it (publishes are sent by the link's command loop itself, in order).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_lite::StreamExt;

use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::kv::{self as kvs, BucketSpec, KvAnswer, KvChange, KvOp, Stores, RETRY_PAUSE};

/// Commands waiting for the link's thread, at most; past it a publish
/// waits (requests and subscriptions wait too).
const COMMANDS_MAX: usize = 4096;
/// Messages of one subscription waiting for its reader, at most; past it
/// NATS messages of that subscription are dropped and counted (core NATS
/// is at-most-once anyway: the readers fill gaps).
const INCOMING_MAX: usize = 8192;
/// The key under which the cluster records its node list.
const NODES_KEY: &str = "nodes";

/// The link's connection to NATS, as last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Connecting for the first time.
    Pending,
    /// Connected to one server of the list.
    Connected,
    /// Lost; the client reconnects by itself.
    Disconnected,
}

/// A message from a subscription.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The subject it was published on.
    pub subject: String,
    /// Where an answer goes, for a request.
    pub reply: Option<String>,
    /// Its bytes.
    pub payload: Bytes,
}

enum Cmd {
    Request {
        subject: String,
        payload: Bytes,
        timeout: Duration,
        reply: flume::Sender<Result<Bytes>>,
    },
    Publish {
        subject: String,
        payload: Bytes,
    },
    Subscribe {
        subject: String,
        queue: Option<String>,
        sink: flume::Sender<Incoming>,
        ready: flume::Sender<Result<()>>,
        stop: tokio::sync::oneshot::Receiver<()>,
    },
    ClaimNodes {
        bucket: String,
        replicas: usize,
        nodes: String,
        deadline: Instant,
        reply: flume::Sender<Result<()>>,
    },
    OpenBucket {
        spec: BucketSpec,
        deadline: Instant,
        reply: flume::Sender<Result<()>>,
    },
    Kv {
        bucket: String,
        op: KvOp,
        reply: flume::Sender<Result<KvAnswer>>,
    },
    Watch {
        bucket: String,
        sink: flume::Sender<KvChange>,
        ready: flume::Sender<Result<()>>,
    },
}

/// A subscription: its messages (a channel any thread or executor reads;
/// clones of it share them). Dropping it unsubscribes.
pub struct Subscription {
    pub messages: flume::Receiver<Incoming>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::ops::Deref for Subscription {
    type Target = flume::Receiver<Incoming>;

    fn deref(&self) -> &Self::Target {
        &self.messages
    }
}

/// What the link's thread reports to the others.
#[derive(Debug, Default)]
struct LinkCounters {
    /// 0 pending, 1 connected, 2 disconnected.
    state: AtomicU8,
    /// Messages of subscriptions dropped because their reader was behind.
    dropped: std::sync::atomic::AtomicU64,
    /// Publishes dropped because the link's queue was full.
    unsent: std::sync::atomic::AtomicU64,
}

/// A node's NATS client, on its own thread. Clones share it; dropping the
/// last one closes the connection and joins the thread.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    cmds: Option<flume::Sender<Cmd>>,
    counters: Arc<LinkCounters>,
    thread: Option<JoinHandle<()>>,
}

impl Link {
    /// Connects to the cluster's NATS servers (any one of them will do),
    /// within `connect_timeout_ms`; the client then reconnects by itself
    /// whenever the connection is lost.
    pub fn connect(cfg: &ClusterConfig) -> Result<Link> {
        let (cmds, rx) = flume::bounded(COMMANDS_MAX);
        let (ready_tx, ready) = flume::bounded(1);
        let counters = Arc::new(LinkCounters::default());
        let (servers, name) = (
            cfg.nats.clone(),
            format!("rookery-{}-{}", cfg.name, cfg.node_id),
        );
        let timeout = Duration::from_millis(cfg.connect_timeout_ms);
        let shared = counters.clone();
        let thread = std::thread::Builder::new()
            .name("rookery-nats".into())
            .spawn(move || run(servers, name, timeout, shared, rx, ready_tx))
            .map_err(|e| Error::Nats(format!("starting the link thread: {e}")))?;
        let link = Link {
            inner: Arc::new(Inner {
                cmds: Some(cmds),
                counters,
                thread: Some(thread),
            }),
        };
        ready.recv().unwrap_or(Err(Error::Closed))?;
        Ok(link)
    }

    /// The connection's state.
    pub fn state(&self) -> LinkState {
        match self.inner.counters.state.load(Ordering::Relaxed) {
            1 => LinkState::Connected,
            2 => LinkState::Disconnected,
            _ => LinkState::Pending,
        }
    }

    /// Subscription messages dropped because their reader was behind.
    pub fn dropped(&self) -> u64 {
        self.inner.counters.dropped.load(Ordering::Relaxed)
    }

    /// Publishes [`Link::try_publish`] dropped because the queue was full.
    pub fn unsent(&self) -> u64 {
        self.inner.counters.unsent.load(Ordering::Relaxed)
    }

    /// Publishes without waiting, from any thread (a shard's hot path):
    /// false, and counted in [`Link::unsent`], when the link's queue is
    /// full or the link is closed. At most once, like all of core NATS.
    pub fn try_publish(&self, subject: String, payload: Bytes) -> bool {
        let sent = self
            .inner
            .cmds
            .as_ref()
            .is_some_and(|cmds| cmds.try_send(Cmd::Publish { subject, payload }).is_ok());
        if !sent {
            self.inner.counters.unsent.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    async fn send_async(&self, cmd: Cmd) -> Result<()> {
        let cmds = self.inner.cmds.as_ref().ok_or(Error::Closed)?;
        cmds.send_async(cmd).await.map_err(|_| Error::Closed)
    }

    /// Sends a request and waits for the first answer, at most `timeout`.
    /// `NoResponders` at once when nothing listens on `subject`.
    pub async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Bytes> {
        let (reply, answer) = flume::bounded(1);
        self.send_async(Cmd::Request {
            subject: subject.to_string(),
            payload,
            timeout,
            reply,
        })
        .await?;
        answer.recv_async().await.unwrap_or(Err(Error::Closed))
    }

    /// Publishes (at most once, like all of core NATS). Publishes leave in
    /// the order they are made; this waits while the link's command queue
    /// is full (never blocking a thread: a shard awaits it).
    pub async fn publish(&self, subject: &str, payload: Bytes) -> Result<()> {
        self.send_async(Cmd::Publish {
            subject: subject.to_string(),
            payload,
        })
        .await
    }

    /// Subscribes to `subject` (wildcards allowed); its messages arrive on
    /// the returned subscription's channel, in order. Dropping the
    /// subscription ends it at once (NATS stops sending).
    pub async fn subscribe(&self, subject: &str) -> Result<Subscription> {
        self.subscribe_in(subject, None).await
    }

    /// As [`Link::subscribe`], in queue group `queue` when given: each
    /// message goes to one member of the group (here or on a shard's
    /// wire, `crate::wire`).
    pub async fn subscribe_in(&self, subject: &str, queue: Option<&str>) -> Result<Subscription> {
        let (sink, messages) = flume::bounded(INCOMING_MAX);
        let (ready, done) = flume::bounded(1);
        let (stop_tx, stop) = tokio::sync::oneshot::channel();
        self.send_async(Cmd::Subscribe {
            subject: subject.to_string(),
            queue: queue.map(str::to_string),
            sink,
            ready,
            stop,
        })
        .await?;
        done.recv_async().await.unwrap_or(Err(Error::Closed))?;
        Ok(Subscription {
            messages,
            _stop: stop_tx,
        })
    }

    /// Records the cluster's node list in its key-value bucket (made with
    /// `kv_replicas` replicas if missing), or checks it against the one
    /// recorded: `NodesChanged` when they differ. Retries while JetStream
    /// is not ready, until `connect_timeout_ms` has passed.
    pub async fn claim_nodes(&self, cfg: &ClusterConfig) -> Result<()> {
        let (reply, answer) = flume::bounded(1);
        self.send_async(Cmd::ClaimNodes {
            bucket: cfg.bucket(),
            replicas: cfg.kv_replicas,
            nodes: cfg.nodes_text(),
            deadline: Instant::now() + Duration::from_millis(cfg.connect_timeout_ms),
            reply,
        })
        .await?;
        answer.recv_async().await.unwrap_or(Err(Error::Closed))
    }
}

/// Key-value buckets (JetStream, replicated by the NATS cluster).
impl Link {
    /// Opens `spec`'s bucket, creating it if missing; retries while
    /// JetStream is not ready, for at most `timeout`. The other key-value
    /// calls need the bucket open.
    pub async fn open_bucket(&self, spec: BucketSpec, timeout: Duration) -> Result<()> {
        let (reply, answer) = flume::bounded(1);
        let deadline = Instant::now() + timeout;
        self.send_async(Cmd::OpenBucket {
            spec,
            deadline,
            reply,
        })
        .await?;
        answer.recv_async().await.unwrap_or(Err(Error::Closed))
    }

    async fn kv(&self, bucket: &str, op: KvOp) -> Result<KvAnswer> {
        let (reply, answer) = flume::bounded(1);
        let bucket = bucket.to_string();
        self.send_async(Cmd::Kv { bucket, op, reply }).await?;
        answer.recv_async().await.unwrap_or(Err(Error::Closed))
    }

    /// The value of `key` and its revision; `None` when it has none (never
    /// set, or deleted).
    pub async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<(Bytes, u64)>> {
        match self.kv(bucket, KvOp::Get(key.to_string())).await? {
            KvAnswer::Value(v) => Ok(v),
            _ => Err(Error::Nats("a get answered with no value".into())),
        }
    }

    /// Sets `key` if it has no value; its revision. `KeyExists` otherwise.
    pub async fn kv_create(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64> {
        revision(
            self.kv(bucket, KvOp::Create(key.to_string(), value))
                .await?,
        )
    }

    /// Sets `key` if its revision is still `revision`; the new revision.
    /// `Conflict` when another write came first.
    pub async fn kv_update(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64> {
        let op = KvOp::Update(key.to_string(), value, revision);
        self::revision(self.kv(bucket, op).await?)
    }

    /// Sets `key`; its new revision.
    pub async fn kv_put(&self, bucket: &str, key: &str, value: Bytes) -> Result<u64> {
        revision(self.kv(bucket, KvOp::Put(key.to_string(), value)).await?)
    }

    /// Deletes `key`'s value (watchers see a change with no value).
    pub async fn kv_delete(&self, bucket: &str, key: &str) -> Result<()> {
        self.kv(bucket, KvOp::Delete(key.to_string()))
            .await
            .map(drop)
    }

    /// Every change of `bucket`, in revision order, none skipped (see
    /// `kv.rs`): first each key's value when the watch started (returns
    /// once it has), then every later change. Dropping the receiver ends
    /// the watch.
    pub async fn watch(&self, bucket: &str) -> Result<flume::Receiver<KvChange>> {
        let (sink, changes) = flume::bounded(kvs::CHANGES_MAX);
        let (ready, started) = flume::bounded(1);
        let bucket = bucket.to_string();
        self.send_async(Cmd::Watch {
            bucket,
            sink,
            ready,
        })
        .await?;
        started.recv_async().await.unwrap_or(Err(Error::Closed))?;
        Ok(changes)
    }
}

fn revision(answer: KvAnswer) -> Result<u64> {
    match answer {
        KvAnswer::Revision(r) => Ok(r),
        _ => Err(Error::Nats("a write answered with no revision".into())),
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The command loop ends when its channel disconnects; the client
        // and its tasks are dropped with the runtime.
        drop(self.cmds.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Body of the link's thread.
fn run(
    servers: Vec<String>,
    name: String,
    timeout: Duration,
    counters: Arc<LinkCounters>,
    rx: flume::Receiver<Cmd>,
    ready: flume::Sender<Result<()>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(Error::Nats(format!("tokio runtime: {e}"))));
            return;
        }
    };
    rt.block_on(async move {
        let client = match connect(&servers, name, timeout, counters.clone()).await {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        counters.state.store(1, Ordering::Relaxed);
        let _ = ready.send(Ok(()));
        let stores = Stores::default();
        while let Ok(cmd) = rx.recv_async().await {
            handle(&client, &counters, &stores, cmd).await;
        }
    });
}

async fn connect(
    servers: &[String],
    name: String,
    timeout: Duration,
    counters: Arc<LinkCounters>,
) -> Result<async_nats::Client> {
    let opts = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(timeout)
        .event_callback(move |event| {
            let counters = counters.clone();
            async move {
                let state = match event {
                    async_nats::Event::Connected => 1,
                    async_nats::Event::Disconnected => 2,
                    _ => return,
                };
                counters.state.store(state, Ordering::Relaxed);
            }
        });
    let failed = |why: String| Error::Connect {
        servers: servers.join(","),
        why,
    };
    match tokio::time::timeout(timeout, opts.connect(servers.to_vec())).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(_) => Err(failed(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// Carries out one command. Requests and claims run as tasks of their own
/// (the loop goes on); publishes and subscriptions are done in the loop,
/// so they keep their order.
async fn handle(
    client: &async_nats::Client,
    counters: &Arc<LinkCounters>,
    stores: &Stores,
    cmd: Cmd,
) {
    match cmd {
        Cmd::Request {
            subject,
            payload,
            timeout,
            reply,
        } => {
            let client = client.clone();
            tokio::spawn(async move {
                let request = async_nats::Request::new()
                    .payload(payload)
                    .timeout(Some(timeout));
                let answer = client
                    .send_request(subject.clone(), request)
                    .await
                    .map(|m| m.payload)
                    .map_err(|e| match e.kind() {
                        async_nats::RequestErrorKind::NoResponders => Error::NoResponders(subject),
                        async_nats::RequestErrorKind::TimedOut => Error::TimedOut(subject),
                        _ => Error::Nats(e.to_string()),
                    });
                let _ = reply.send(answer);
            });
        }
        Cmd::Publish { subject, payload } => {
            if let Err(e) = client.publish(subject, payload).await {
                tracing::warn!(error = %e, "NATS publish failed");
            }
        }
        Cmd::Subscribe {
            subject,
            queue,
            sink,
            ready,
            stop,
        } => match match queue {
            Some(q) => client.queue_subscribe(subject, q).await,
            None => client.subscribe(subject).await,
        } {
            Ok(sub) => {
                let _ = ready.send(Ok(()));
                tokio::spawn(forward(sub, sink, stop, counters.clone()));
            }
            Err(e) => {
                let _ = ready.send(Err(Error::Nats(e.to_string())));
            }
        },
        Cmd::ClaimNodes {
            bucket,
            replicas,
            nodes,
            deadline,
            reply,
        } => {
            let client = client.clone();
            tokio::spawn(async move {
                let _ = reply.send(claim(client, &bucket, replicas, &nodes, deadline).await);
            });
        }
        Cmd::OpenBucket {
            spec,
            deadline,
            reply,
        } => {
            let (client, stores) = (client.clone(), stores.clone());
            tokio::spawn(async move {
                let _ = reply.send(kvs::open(client, stores, spec, deadline).await);
            });
        }
        Cmd::Kv { bucket, op, reply } => {
            let stores = stores.clone();
            tokio::spawn(async move {
                let _ = reply.send(kvs::apply(&stores, &bucket, op).await);
            });
        }
        Cmd::Watch {
            bucket,
            sink,
            ready,
        } => {
            tokio::spawn(kvs::watch(stores.clone(), bucket, sink, ready));
        }
    }
}

/// Hands a subscription's messages to its reader until the subscription
/// is dropped (or its reader is gone), then unsubscribes.
async fn forward(
    mut sub: async_nats::Subscriber,
    sink: flume::Sender<Incoming>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    counters: Arc<LinkCounters>,
) {
    loop {
        let next = futures_lite::future::or(async { sub.next().await }, async {
            let _ = (&mut stop).await;
            None
        })
        .await;
        let Some(m) = next else { break };
        let incoming = Incoming {
            subject: m.subject.to_string(),
            reply: m.reply.map(|r| r.to_string()),
            payload: m.payload,
        };
        match sink.try_send(incoming) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(_)) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(flume::TrySendError::Disconnected(_)) => break,
        }
    }
    let _ = sub.unsubscribe().await;
}

/// The node-list claim: create the bucket and the key, or compare with
/// what is there. JetStream answers "unavailable" while its servers elect a
/// leader: such failures are retried until `deadline`.
async fn claim(
    client: async_nats::Client,
    bucket: &str,
    replicas: usize,
    nodes: &str,
    deadline: Instant,
) -> Result<()> {
    let js = kvs::context(client);
    let mut last = String::new();
    while Instant::now() < deadline {
        match claim_once(&js, bucket, replicas, nodes).await {
            Ok(()) => return Ok(()),
            Err(e @ Error::NodesChanged { .. }) => return Err(e),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    Err(Error::Nats(format!(
        "recording the node list in bucket {bucket}: {last}"
    )))
}

async fn claim_once(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    nodes: &str,
) -> Result<()> {
    let spec = BucketSpec {
        name: bucket.to_string(),
        replicas,
        max_age: None,
    };
    let store = kvs::open_once(js, &spec).await?;
    match store
        .create(NODES_KEY, Bytes::from(nodes.to_string()))
        .await
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::Nats(e.to_string())),
    }
    let recorded = store
        .get(NODES_KEY)
        .await
        .map_err(|e| Error::Nats(e.to_string()))?
        .ok_or_else(|| Error::Nats("the node list vanished".into()))?;
    let recorded = String::from_utf8_lossy(&recorded).into_owned();
    if recorded == nodes {
        Ok(())
    } else {
        Err(Error::NodesChanged {
            recorded,
            configured: nodes.to_string(),
        })
    }
}
