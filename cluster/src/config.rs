//! A node's cluster settings, parsed and validated before anything starts.
//!
//! Invariant: a `ClusterConfig` that passed [`ClusterConfig::validate`] has
//! a non-empty list of distinct node ids that contains this node, at least
//! one NATS server, a name usable in subjects and bucket names, and
//! durations in range.

use crate::error::{Error, Result};

/// Node ids in one cluster, at most.
pub const NODES_MAX: usize = 64;

/// One node's view of its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The cluster's name: the prefix of its subjects and of its key-value
    /// bucket, so that two clusters can share one NATS.
    pub name: String,
    /// This node's id (one of `nodes`).
    pub node_id: u32,
    /// Every node of the cluster, as configured (ownership is computed
    /// over this list, whichever nodes are up).
    pub nodes: Vec<u32>,
    /// NATS servers (`nats://host:port`), one or several of a NATS cluster.
    pub nats: Vec<String>,
    /// Replicas of the cluster's key-value bucket (at most the NATS
    /// cluster's JetStream servers). Default 3.
    pub kv_replicas: usize,
    /// How long a start waits for NATS (and its JetStream) before it fails.
    /// Default 10,000 ms.
    pub connect_timeout_ms: u64,
}

impl ClusterConfig {
    /// Parses `1,2,3` (spaces allowed) into node ids, in the given order.
    pub fn parse_nodes(text: &str) -> Result<Vec<u32>> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<u32>().map_err(|_| {
                    Error::InvalidConfig(format!("--cluster-nodes: {s:?} is not a node id"))
                })
            })
            .collect()
    }

    /// Splits `nats://a:4222,nats://b:4222` into server URLs (async-nats
    /// takes one URL per string).
    pub fn parse_servers(text: &str) -> Vec<String> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Checks every field; the error names the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return bad(format!(
                "--cluster-name {:?}: 1 to 64 letters, digits, '-' or '_'",
                self.name
            ));
        }
        if self.nodes.is_empty() || self.nodes.len() > NODES_MAX {
            return bad(format!("--cluster-nodes: 1 to {NODES_MAX} node ids"));
        }
        let mut sorted = self.nodes.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return bad(format!("--cluster-nodes: node {} is listed twice", w[0]));
        }
        if !self.nodes.contains(&self.node_id) {
            return bad(format!(
                "--node-id {} is not one of --cluster-nodes {}",
                self.node_id,
                self.nodes_text()
            ));
        }
        if self.nats.is_empty() {
            return bad("--nats: at least one server".into());
        }
        if !(1..=5).contains(&self.kv_replicas) {
            return bad("--cluster-kv-replicas must be 1..=5".into());
        }
        if !(100..=600_000).contains(&self.connect_timeout_ms) {
            return bad("--cluster-connect-timeout-ms must be 100..=600000".into());
        }
        Ok(())
    }

    /// The node list as the cluster records it: ascending, comma-separated
    /// (so that `3,1,2` and `1,2,3` are the same cluster).
    pub fn nodes_text(&self) -> String {
        let mut sorted = self.nodes.clone();
        sorted.sort_unstable();
        sorted
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The key-value bucket of this cluster.
    pub fn bucket(&self) -> String {
        format!("rookery-{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> ClusterConfig {
        ClusterConfig {
            name: "chat".into(),
            node_id: 2,
            nodes: vec![3, 1, 2],
            nats: vec!["nats://127.0.0.1:4222".into()],
            kv_replicas: 3,
            connect_timeout_ms: 10_000,
        }
    }

    fn refused(c: ClusterConfig, flag: &str) {
        match c.validate() {
            Err(Error::InvalidConfig(m)) => assert!(m.contains(flag), "{m}"),
            other => panic!("{flag}: {other:?}"),
        }
    }

    #[test]
    fn parses_lists() {
        assert_eq!(
            ClusterConfig::parse_nodes(" 1, 2,3 ").unwrap(),
            vec![1, 2, 3]
        );
        assert!(matches!(
            ClusterConfig::parse_nodes("1,x"),
            Err(Error::InvalidConfig(m)) if m.contains("\"x\"")
        ));
        assert_eq!(
            ClusterConfig::parse_servers("nats://a:1, nats://b:2,"),
            vec!["nats://a:1".to_string(), "nats://b:2".to_string()]
        );
    }

    #[test]
    fn validation_names_the_flag() {
        assert!(good().validate().is_ok());
        assert_eq!(good().nodes_text(), "1,2,3");
        assert_eq!(good().bucket(), "rookery-chat");
        refused(
            ClusterConfig {
                name: "a.b".into(),
                ..good()
            },
            "--cluster-name",
        );
        refused(
            ClusterConfig {
                name: String::new(),
                ..good()
            },
            "--cluster-name",
        );
        refused(
            ClusterConfig {
                nodes: vec![],
                ..good()
            },
            "--cluster-nodes",
        );
        refused(
            ClusterConfig {
                nodes: vec![1, 2, 2],
                ..good()
            },
            "listed twice",
        );
        refused(
            ClusterConfig {
                node_id: 9,
                ..good()
            },
            "--node-id 9",
        );
        refused(
            ClusterConfig {
                nats: vec![],
                ..good()
            },
            "--nats",
        );
        refused(
            ClusterConfig {
                kv_replicas: 0,
                ..good()
            },
            "--cluster-kv-replicas",
        );
        refused(
            ClusterConfig {
                connect_timeout_ms: 0,
                ..good()
            },
            "--cluster-connect-timeout-ms",
        );
        let many = (0..=NODES_MAX as u32).collect::<Vec<_>>();
        refused(
            ClusterConfig {
                nodes: many,
                node_id: 0,
                ..good()
            },
            "--cluster-nodes",
        );
    }
}
