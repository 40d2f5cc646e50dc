//! The one door for writes to accounts and sessions (registration, JWT
//! subjects seen first, password changes, sessions opened and ended).
//! A single node writes its own `meta.redb` (on the blocking pool). A
//! cluster node writes the cluster's key-value buckets, where uniqueness is
//! decided, and returns once its own replica shows the write
//! (`cluster/replica.rs`), so that the client's next request to this node
//! sees it. Reads go to the directory everywhere.

use std::sync::Arc;

use rookery_cluster::Error as ClusterError;
use rookery_engine::{Directory, User};

use crate::app::ApiError;
use crate::auth::blocking;
use crate::cluster::records::{self, SessionRecord, UserRecord};
use crate::cluster::replica::{SESSIONS, USERS};
use crate::cluster::{Node, VISIBLE_WITHIN};
use crate::shared::Shared;

/// Tries at a password change that another write to the same user beat.
const UPDATE_TRIES_MAX: usize = 4;

/// Where this node's account writes go.
#[derive(Clone)]
pub enum Accounts {
    Local(Directory),
    Cluster(Directory, Arc<Node>),
}

type Result<T> = std::result::Result<T, ApiError>;

fn starting() -> ApiError {
    ApiError::ClusterUnavailable("this node is starting".into())
}

/// A cluster failure as a client sees it.
pub fn cluster_error(e: ClusterError) -> ApiError {
    ApiError::ClusterUnavailable(e.to_string())
}

impl Accounts {
    pub fn of(shared: &Shared) -> Accounts {
        let dir = shared.engine.directory();
        match &shared.cluster {
            Some(node) => Accounts::Cluster(dir, node.clone()),
            None => Accounts::Local(dir),
        }
    }

    /// The directory, for reads.
    pub fn directory(&self) -> Directory {
        match self {
            Accounts::Local(d) | Accounts::Cluster(d, _) => d.clone(),
        }
    }

    /// The registered user called `name`. A cluster node that does not have
    /// it yet (registered on another node a moment ago, not yet copied
    /// here) reads the cluster's record and copies it first.
    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let (dir, owned) = (self.directory(), name.to_string());
        let local = blocking(move || dir.user_by_name(&owned)).await?;
        let Accounts::Cluster(dir, node) = self else {
            return Ok(local);
        };
        let Ok(unique) = Directory::unique_user_key(name, false) else {
            return Ok(local);
        };
        if local.is_some() {
            return Ok(local);
        }
        let (user, revision) = match node.read_user(&unique).await {
            Ok((record, revision)) => (record.to_user(), revision),
            Err(ApiError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let replica = node.replica().cloned().ok_or_else(starting)?;
        let (dir, name) = (dir.clone(), name.to_string());
        // Copied unless the watch got here first with this or a newer
        // record (a password change): then this node's own is the one.
        blocking(move || {
            replica
                .copy_unless_passed(USERS, revision, || dir.replicate_user(&user))
                .transpose()?;
            dir.user_by_name(&name)
        })
        .await
        .map_err(ApiError::from)
    }

    /// The user of a live session and when it expires. A cluster node that
    /// does not have it yet (opened on another node a moment ago) reads the
    /// cluster's record and copies it first; if NATS cannot say, the token
    /// is unknown here.
    pub async fn session(&self, hash: [u8; 32], now_ms: u64) -> Result<Option<(u64, u64)>> {
        let dir = self.directory();
        let local = blocking(move || dir.session(&hash, now_ms)).await?;
        let (Accounts::Cluster(dir, node), None) = (self, local) else {
            return Ok(local);
        };
        let key = records::session_key(&hash);
        let Ok(Some((value, revision))) = node.link.kv_get(&node.buckets[SESSIONS], &key).await
        else {
            return Ok(None);
        };
        let Ok(s) = serde_json::from_slice::<SessionRecord>(&value) else {
            return Ok(None);
        };
        if s.expires_ms <= now_ms {
            return Ok(None);
        }
        let replica = node.replica().cloned().ok_or_else(starting)?;
        let dir = dir.clone();
        // Copied unless the watch got here first: then a logout that came
        // after this read is not undone, and this node's own answer holds.
        blocking(move || {
            replica
                .copy_unless_passed(SESSIONS, revision, || {
                    dir.replicate_session(&hash, s.user, s.expires_ms)
                })
                .transpose()?;
            dir.session(&hash, now_ms)
        })
        .await
        .map_err(ApiError::from)
    }

    /// Registers `name` with a password hash; its id. `Conflict` for a
    /// taken name.
    pub async fn create_user(&self, name: &str, hash: &str, now_ms: u64) -> Result<u64> {
        let (dir, name, hash) = (self.directory(), name.to_string(), hash.to_string());
        let Accounts::Cluster(_, node) = self else {
            return Ok(blocking(move || dir.create_user(&name, &hash, now_ms)).await?);
        };
        let unique = Directory::unique_user_key(&name, false)?;
        let id = node.next_id("user").await?;
        let record = UserRecord {
            id,
            name: name.clone(),
            created_ms: now_ms,
            hash: Some(hash),
        };
        match node.create_user(&unique, &record).await {
            Err(ApiError::Conflict(_)) => Err(ApiError::Conflict(format!("user name {name:?}"))),
            other => other.map(|_| id),
        }
    }

    /// The id of the user a backend vouches for as `subject`, created at
    /// first sight.
    pub async fn ensure_external_user(&self, subject: &str, now_ms: u64) -> Result<u64> {
        let (dir, sub) = (self.directory(), subject.to_string());
        let Accounts::Cluster(_, node) = self else {
            return Ok(blocking(move || dir.ensure_external_user(&sub, now_ms)).await?);
        };
        let unique = Directory::unique_user_key(subject, true)?;
        let d = dir.clone();
        if let Some(u) = blocking(move || d.external_user(&sub)).await? {
            return Ok(u.id);
        }
        let id = node.next_id("user").await?;
        let record = UserRecord {
            id,
            name: subject.to_string(),
            created_ms: now_ms,
            hash: None,
        };
        match node.create_user(&unique, &record).await {
            Ok(()) => Ok(id),
            // Another node saw the subject first: its record holds, once
            // this node's copy has it (the caller looks the user up here).
            Err(ApiError::Conflict(_)) => {
                let (record, revision) = node.read_user(&unique).await?;
                node.visible(USERS, revision).await?;
                Ok(record.id)
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces the password hash of `user`.
    pub async fn set_password(&self, user: u64, hash: &str) -> Result<()> {
        let (dir, hash) = (self.directory(), hash.to_string());
        let Accounts::Cluster(_, node) = self else {
            return Ok(blocking(move || dir.set_password(user, &hash)).await?);
        };
        let u: User = blocking(move || dir.user(user))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("user {user}")))?;
        let unique = Directory::unique_user_key(&u.name, u.password_hash.is_none())?;
        for _ in 0..UPDATE_TRIES_MAX {
            let (mut record, revision) = node.read_user(&unique).await?;
            record.hash = Some(hash.clone());
            let key = records::user_key(&unique);
            let value = records::json_bytes(&record);
            match node
                .link
                .kv_update(&node.buckets[USERS], &key, value, revision)
                .await
            {
                Ok(rev) => return node.visible(USERS, rev).await,
                Err(ClusterError::Conflict(_)) => continue,
                Err(e) => return Err(cluster_error(e)),
            }
        }
        Err(ApiError::Conflict(format!("user {user} kept changing")))
    }

    /// Opens a session (its token's hash) for `user` until `expires_ms`.
    pub async fn create_session(&self, hash: [u8; 32], user: u64, expires_ms: u64) -> Result<()> {
        let dir = self.directory();
        let Accounts::Cluster(_, node) = self else {
            return Ok(blocking(move || dir.create_session(&hash, user, expires_ms)).await?);
        };
        let value = SessionRecord { user, expires_ms };
        let value = records::json_bytes(&value);
        let key = records::session_key(&hash);
        let rev = node
            .link
            .kv_put(&node.buckets[SESSIONS], &key, value)
            .await
            .map_err(cluster_error)?;
        node.visible(SESSIONS, rev).await
    }

    /// Ends a session; whether it existed.
    pub async fn delete_session(&self, hash: [u8; 32]) -> Result<bool> {
        let dir = self.directory();
        if let Accounts::Cluster(_, node) = self {
            // Every node drops it when the deletion reaches its replica;
            // this one drops it now (below).
            let key = records::session_key(&hash);
            let bucket = &node.buckets[SESSIONS];
            node.link
                .kv_delete(bucket, &key)
                .await
                .map_err(cluster_error)?;
        }
        Ok(blocking(move || dir.delete_session(&hash)).await?)
    }

    /// Ends every session of `user` but `keep`; the ended ones.
    pub async fn delete_sessions_of(
        &self,
        user: u64,
        keep: Option<[u8; 32]>,
    ) -> Result<Vec<([u8; 32], u64)>> {
        let dir = self.directory();
        let Accounts::Cluster(..) = self else {
            return Ok(blocking(move || dir.delete_sessions_of(user, keep.as_ref())).await?);
        };
        let sessions = blocking(move || dir.sessions_of(user, keep.as_ref())).await?;
        for (hash, _) in &sessions {
            self.delete_session(*hash).await?;
        }
        Ok(sessions)
    }
}

/// Tries at handing out an id before giving up (each lost try means
/// another node handed one out meanwhile).
const ID_TRIES_MAX: u32 = 64;

impl Node {
    /// Hands out the next user or room id (`kind` "user" or "room"): the
    /// first id this node owns above every id handed out in the cluster
    /// so far, by a compare-and-set of the counter `ids.<kind>` in the
    /// cluster's bucket. So ids follow the order they were handed out in,
    /// cluster-wide, as they do on one node (lists ordered by id list
    /// rooms and users oldest first), and no two nodes hand out one id.
    pub async fn next_id(&self, kind: &str) -> Result<u64> {
        let key = records::id_counter_key(kind);
        let bucket = &self.buckets[USERS];
        for attempt in 0..ID_TRIES_MAX {
            let got = self
                .link
                .kv_get(bucket, &key)
                .await
                .map_err(cluster_error)?;
            let above = match &got {
                Some((value, _)) => serde_json::from_slice::<u64>(value)
                    .map_err(|e| ApiError::Internal(format!("the cluster's counter {key}: {e}")))?,
                None => 0,
            };
            let id = (above + 1..)
                .find(|id| self.owner_of(*id) == self.cfg.node_id)
                .expect("some id above is this node's");
            let value = records::json_bytes(&id);
            let set = match got {
                Some((_, revision)) => self.link.kv_update(bucket, &key, value, revision).await,
                None => self.link.kv_create(bucket, &key, value).await,
            };
            match set {
                Ok(_) => return Ok(id),
                Err(ClusterError::Conflict(_) | ClusterError::KeyExists(_)) => {
                    // Another node won this round: spread the next tries.
                    let pause = u64::from(attempt % 8) * 200 + u64::from(self.cfg.node_id % 7) * 50;
                    glommio::timer::sleep(std::time::Duration::from_micros(pause)).await;
                }
                Err(e) => return Err(cluster_error(e)),
            }
        }
        Err(ApiError::ClusterUnavailable(format!(
            "no {kind} id after {ID_TRIES_MAX} tries: too many at once"
        )))
    }

    /// Records a new user; `Conflict` when its unique key is taken.
    async fn create_user(&self, unique: &str, record: &UserRecord) -> Result<()> {
        let key = records::user_key(unique);
        let value = records::json_bytes(record);
        match self.link.kv_create(&self.buckets[USERS], &key, value).await {
            Ok(rev) => self.visible(USERS, rev).await,
            Err(ClusterError::KeyExists(_)) => Err(ApiError::Conflict(unique.to_string())),
            Err(e) => Err(cluster_error(e)),
        }
    }

    /// The cluster's record of a user, and its revision.
    async fn read_user(&self, unique: &str) -> Result<(UserRecord, u64)> {
        let key = records::user_key(unique);
        let (value, revision) = self
            .link
            .kv_get(&self.buckets[USERS], &key)
            .await
            .map_err(cluster_error)?
            .ok_or_else(|| ApiError::NotFound(format!("user {unique:?}")))?;
        let record = serde_json::from_slice(&value)
            .map_err(|e| ApiError::Internal(format!("the cluster's record of {key}: {e}")))?;
        Ok((record, revision))
    }

    /// Changes what is given of `current`'s profile in the cluster's users
    /// bucket (every node applies it, as it does users) at the revision
    /// it read, again when another change came first (so two changes at
    /// once never undo each other), and waits until this node applied it.
    /// `current` is this node's copy, the base when the cluster has none.
    pub async fn edit_profile(
        &self,
        current: &rookery_engine::Profile,
        display_name: Option<String>,
        status: Option<String>,
        avatar: Option<Option<u128>>,
        now_ms: u64,
    ) -> Result<()> {
        let key = records::profile_key(current.user);
        let bucket = &self.buckets[USERS];
        for _ in 0..ID_TRIES_MAX {
            let got = self
                .link
                .kv_get(bucket, &key)
                .await
                .map_err(cluster_error)?;
            let base = match &got {
                Some((value, _)) => serde_json::from_slice::<records::ProfileRecord>(value)
                    .map_err(|e| ApiError::Internal(format!("the cluster's {key}: {e}")))?,
                None => records::ProfileRecord {
                    user: current.user,
                    display_name: current.display_name.clone(),
                    status: current.status.clone(),
                    updated_ms: current.updated_ms,
                    avatar: current.avatar.map(|id| format!("{id:032x}")),
                },
            };
            let record = records::ProfileRecord {
                user: current.user,
                display_name: display_name.clone().unwrap_or(base.display_name),
                status: status.clone().unwrap_or(base.status),
                updated_ms: now_ms,
                avatar: avatar.map_or(base.avatar, |a| a.map(|id| format!("{id:032x}"))),
            };
            let value = records::json_bytes(&record);
            let set = match got {
                Some((_, revision)) => self.link.kv_update(bucket, &key, value, revision).await,
                None => self.link.kv_create(bucket, &key, value).await,
            };
            match set {
                Ok(rev) => return self.visible(USERS, rev).await,
                Err(ClusterError::Conflict(_) | ClusterError::KeyExists(_)) => continue,
                Err(e) => return Err(cluster_error(e)),
            }
        }
        Err(ApiError::ClusterUnavailable(format!(
            "the profile of user {} kept changing under {ID_TRIES_MAX} tries",
            current.user
        )))
    }

    /// Waits until revision `rev` of bucket `b` shows on this node.
    async fn visible(&self, b: usize, rev: u64) -> Result<()> {
        let Some(replica) = self.replica() else {
            return Err(ApiError::ClusterUnavailable("this node is starting".into()));
        };
        if replica.wait(b, rev, VISIBLE_WITHIN).await {
            Ok(())
        } else {
            Err(ApiError::ClusterUnavailable(format!(
                "the write was not seen here within {} ms",
                VISIBLE_WITHIN.as_millis()
            )))
        }
    }
}
