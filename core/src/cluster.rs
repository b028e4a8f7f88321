//! Cluster membership, sans-IO: the control server's table of nodes (who
//! registered, under which name, with which Snowflake worker id, when it was
//! last heard from) and the checks a node's or control server's config must
//! pass before it starts.
//!
//! The host (`host-bridge/src/control.rs`) serves this table over lunatic's
//! control HTTP API; nodes (`host-bridge/src/cluster.rs`) read the live
//! members from it. Time is handed in (`now_ms`), so every rule is tested
//! here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::snowflake::MAX_WORKER;

/// Longest node name or region label.
pub const MAX_LABEL: usize = 64;

/// What a joining node tells the control server about itself, besides
/// lunatic's certificate request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// `node.name`: unique among the live nodes.
    pub name: String,
    /// `cluster.region`.
    pub region: String,
    /// `cluster.advertise`: the QUIC address nodes of other regions dial
    /// (empty: the node's own address).
    #[serde(default)]
    pub advertise: String,
}

/// One node as the control server lists it to the nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// lunatic's node id (what the guest sends to).
    pub id: u64,
    /// The node's QUIC address.
    pub address: String,
    /// lunatic's node name: the certificate's subject, a UUID.
    pub name: String,
    /// `node.name`.
    pub node_name: String,
    pub region: String,
    /// The node's Snowflake worker id, unique among live nodes.
    pub worker_id: u16,
}

/// Why the control server refuses a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A live node already has this `node.name`.
    DuplicateName { name: String, node_id: Option<u64> },
    /// Every worker id (0..=1023) belongs to a live node.
    NoWorkerId,
    /// The name or region is empty, too long or not printable ASCII.
    BadLabel { key: &'static str, reason: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::DuplicateName { name, node_id } => {
                write!(f, "node.name {name:?} is already taken by a live node")?;
                if let Some(id) = node_id {
                    write!(f, " (node id {id})")?;
                }
                write!(
                    f,
                    "; give each node its own name (CHORUS_NODE_NAME), or wait for the \
                     control server to drop the old one (cluster.node_timeout_ms)"
                )
            }
            Refusal::NoWorkerId => write!(
                f,
                "all {} Snowflake worker ids are held by live nodes",
                u32::from(MAX_WORKER) + 1
            ),
            Refusal::BadLabel { key, reason } => write!(f, "{key} {reason}"),
        }
    }
}

/// One registration in the control server's table.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// lunatic's node name (UUID) and the bearer token of its later calls.
    uuid: String,
    token: String,
    join: Join,
    worker_id: u16,
    /// Set once the node reported its QUIC address (`/started`).
    node: Option<(u64, String)>,
    last_seen_ms: u64,
    /// Heard from by this run of the control server (registered or
    /// authenticated). A restored entry is not, until its node polls: a
    /// node registering under its name takes it over (the old node, gone
    /// while no control server ran, is presumed dead).
    #[serde(skip)]
    confirmed: bool,
}

/// What [`Registry::snapshot`] writes.
#[derive(Serialize, Deserialize)]
struct Saved {
    entries: Vec<(u64, Entry)>,
    next_registration: u64,
    next_node_id: u64,
}

/// The control server's table of nodes.
#[derive(Debug)]
pub struct Registry {
    entries: BTreeMap<u64, Entry>,
    next_registration: u64,
    next_node_id: u64,
    /// A node not heard from for this long is dropped.
    timeout_ms: u64,
}

impl Registry {
    pub fn new(timeout_ms: u64) -> Self {
        Self {
            entries: BTreeMap::new(),
            next_registration: 1,
            next_node_id: 1,
            timeout_ms,
        }
    }

    /// The table as JSON, for the control server's state file: a restarted
    /// control server takes its nodes back (their tokens, node ids and
    /// Snowflake worker ids) instead of orphaning them. It holds the nodes'
    /// bearer tokens: the file must be private to the server.
    pub fn snapshot(&self) -> Result<String, String> {
        let saved = Saved {
            entries: self.entries.iter().map(|(k, e)| (*k, e.clone())).collect(),
            next_registration: self.next_registration,
            next_node_id: self.next_node_id,
        };
        serde_json::to_string(&saved).map_err(|e| e.to_string())
    }

    /// A table read back from [`Registry::snapshot`]. Every node in it counts
    /// as heard from at `now_ms`: one that died while no control server ran
    /// is dropped a `timeout_ms` later, as if it had died under this one.
    pub fn restore(timeout_ms: u64, json: &str, now_ms: u64) -> Result<Self, String> {
        let saved: Saved = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let entries: BTreeMap<u64, Entry> = saved
            .entries
            .into_iter()
            .map(|(k, mut e)| {
                e.last_seen_ms = now_ms;
                (k, e)
            })
            .collect();
        // Ids are never reused, even if the file was edited by hand.
        let next_registration = entries
            .keys()
            .max()
            .map_or(1, |k| k + 1)
            .max(saved.next_registration);
        let next_node_id = entries
            .values()
            .filter_map(|e| e.node.as_ref().map(|(id, _)| id + 1))
            .max()
            .unwrap_or(1)
            .max(saved.next_node_id);
        Ok(Self {
            entries,
            next_registration,
            next_node_id,
            timeout_ms,
        })
    }

    /// Drops the nodes not heard from within the timeout (their name and
    /// worker id become free).
    pub fn expire(&mut self, now_ms: u64) -> Vec<(String, Option<u64>)> {
        let timeout = self.timeout_ms;
        let mut gone = Vec::new();
        self.entries.retain(|_, e| {
            let live = now_ms.saturating_sub(e.last_seen_ms) < timeout;
            if !live {
                gone.push((e.join.name.clone(), e.node.as_ref().map(|(id, _)| *id)));
            }
            live
        });
        gone
    }

    /// Registers a node: its registration id and Snowflake worker id, or why
    /// not.
    pub fn register(
        &mut self,
        uuid: &str,
        token: &str,
        join: Join,
        now_ms: u64,
    ) -> Result<(u64, u16), Refusal> {
        check_label("node.name", &join.name)?;
        check_label("cluster.region", &join.region)?;
        self.expire(now_ms);
        // A restored entry its node never confirmed yields its name (and
        // worker id) to a node that registers under it.
        self.entries
            .retain(|_, e| e.confirmed || e.join.name != join.name);
        if let Some(e) = self.entries.values().find(|e| e.join.name == join.name) {
            return Err(Refusal::DuplicateName {
                name: join.name,
                node_id: e.node.as_ref().map(|(id, _)| *id),
            });
        }
        let taken: std::collections::BTreeSet<u16> =
            self.entries.values().map(|e| e.worker_id).collect();
        let worker_id = (0..=MAX_WORKER)
            .find(|w| !taken.contains(w))
            .ok_or(Refusal::NoWorkerId)?;
        let id = self.next_registration;
        self.next_registration += 1;
        self.entries.insert(
            id,
            Entry {
                uuid: uuid.to_string(),
                token: token.to_string(),
                join,
                worker_id,
                node: None,
                last_seen_ms: now_ms,
                confirmed: true,
            },
        );
        Ok((id, worker_id))
    }

    /// The registration a node's call belongs to (its UUID and bearer
    /// token); marks it as heard from.
    pub fn authenticate(&mut self, uuid: &str, token: &str, now_ms: u64) -> Option<u64> {
        self.expire(now_ms);
        let (id, entry) = self
            .entries
            .iter_mut()
            .find(|(_, e)| e.uuid == uuid && constant_time_eq(&e.token, token))?;
        entry.last_seen_ms = now_ms;
        entry.confirmed = true;
        Some(*id)
    }

    /// The node of `registration` started its QUIC server at `address`: its
    /// node id (new ids are never reused, so a restarted node is a new node
    /// to the others).
    pub fn start(&mut self, registration: u64, address: &str) -> Option<u64> {
        let entry = self.entries.get_mut(&registration)?;
        let id = self.next_node_id;
        self.next_node_id += 1;
        entry.node = Some((id, address.to_string()));
        Some(id)
    }

    /// The node of `registration` stopped (clean exit): forgotten at once.
    pub fn stop(&mut self, registration: u64) -> Option<String> {
        self.entries.remove(&registration).map(|e| e.join.name)
    }

    /// The live nodes that started, by node id.
    pub fn members(&self) -> Vec<Member> {
        self.members_seen_from(None)
    }

    /// The members as the node of `registration` must dial them: a node of
    /// another region that set `cluster.advertise` is listed at that
    /// address, every other node at its own.
    pub fn members_for(&self, registration: u64) -> Vec<Member> {
        let region = self
            .entries
            .get(&registration)
            .map(|e| e.join.region.as_str());
        self.members_seen_from(region)
    }

    fn members_seen_from(&self, region: Option<&str>) -> Vec<Member> {
        let mut out: Vec<Member> = self
            .entries
            .values()
            .filter_map(|e| {
                let (id, address) = e.node.as_ref()?;
                let far = region.is_some_and(|r| r != e.join.region);
                let address = if far && !e.join.advertise.is_empty() {
                    e.join.advertise.clone()
                } else {
                    address.clone()
                };
                Some(Member {
                    id: *id,
                    address,
                    name: e.uuid.clone(),
                    node_name: e.join.name.clone(),
                    region: e.join.region.clone(),
                    worker_id: e.worker_id,
                })
            })
            .collect();
        out.sort_by_key(|m| m.id);
        out
    }
}

fn check_label(key: &'static str, value: &str) -> Result<(), Refusal> {
    let reason = if value.is_empty() {
        "must not be empty"
    } else if value.len() > MAX_LABEL {
        "is longer than 64 bytes"
    } else if !value.bytes().all(|b| b.is_ascii_graphic()) {
        "must be printable ASCII without spaces"
    } else {
        return Ok(());
    };
    Err(Refusal::BadLabel {
        key,
        reason: reason.into(),
    })
}

/// Compares secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The control server's address as a URL: `host:port` or `http://host:port/`.
pub fn control_url(control: &str) -> String {
    let base = if control.contains("://") {
        control.to_string()
    } else {
        format!("http://{control}")
    };
    if base.ends_with('/') {
        base
    } else {
        format!("{base}/")
    }
}

/// The host part of `host:port`, `[v6]:port` or a URL.
fn host_of(addr: &str) -> &str {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = rest.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    rest.rsplit_once(':').map_or(rest, |(h, _)| h)
}

fn is_loopback(addr: &str) -> bool {
    let host = host_of(addr);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks shared by a node and the control server: secure mode needs a join
/// secret (and the control server its CA); `insecure_local` only on
/// loopback addresses.
fn check_security(
    c: &Config,
    addrs: &[(&'static str, &str)],
) -> Result<(), (&'static str, String)> {
    let k = &c.cluster;
    if k.insecure_local {
        for (key, addr) in addrs {
            if !is_loopback(addr) {
                return Err((
                    key,
                    format!(
                        "is {addr:?}, but cluster.insecure_local (lunatic's public test CA, \
                         no join secret) only runs on loopback addresses"
                    ),
                ));
            }
        }
        return Ok(());
    }
    if k.join_secret.len() < 16 {
        return Err((
            "cluster.join_secret",
            "must be set (at least 16 characters) for a cluster: nodes present it to \
             join; or set cluster.insecure_local = true for an unauthenticated cluster \
             on loopback"
                .into(),
        ));
    }
    Ok(())
}

/// Can this config start a node that joins a cluster? (Only called when
/// `cluster.control` is set.)
pub fn check_node(c: &Config) -> Result<(), (&'static str, String)> {
    let k = &c.cluster;
    if c.store.backend != "scylla" {
        return Err((
            "store.backend",
            format!(
                "is {:?}, but a node in a cluster (cluster.control is set) must use the \
                 shared CQL store: set store.backend = \"scylla\" (CHORUS_STORE=scylla); \
                 SQLite is one node's own file",
                c.store.backend
            ),
        ));
    }
    let bind: std::net::SocketAddr = k
        .bind
        .parse()
        .map_err(|_| ("cluster.bind", format!("{:?} is not an ip:port", k.bind)))?;
    if bind.ip().is_unspecified() {
        return Err((
            "cluster.bind",
            "must be a specific IP (it is the address the other nodes dial), not 0.0.0.0 or ::"
                .into(),
        ));
    }
    check_label("node.name", &c.node.name).map_err(refusal_key)?;
    check_label("cluster.region", &k.region).map_err(refusal_key)?;
    if !k.advertise.is_empty() {
        let advertise: std::net::SocketAddr = k.advertise.parse().map_err(|_| {
            (
                "cluster.advertise",
                format!("{:?} is not an ip:port", k.advertise),
            )
        })?;
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            return Err((
                "cluster.advertise",
                "must be a specific IP and port (the address nodes of other regions dial)".into(),
            ));
        }
    }
    let mut addrs = vec![
        ("cluster.control", k.control.as_str()),
        ("cluster.bind", &k.bind),
    ];
    if !k.advertise.is_empty() {
        addrs.push(("cluster.advertise", &k.advertise));
    }
    check_security(c, &addrs)
}

/// Can this config start a control server?
pub fn check_control(c: &Config) -> Result<(), (&'static str, String)> {
    let k = &c.cluster;
    if k.control_bind.parse::<std::net::SocketAddr>().is_err() {
        return Err((
            "cluster.control_bind",
            format!("{:?} is not an ip:port", k.control_bind),
        ));
    }
    check_security(c, &[("cluster.control_bind", &k.control_bind)])?;
    if !k.insecure_local && (k.ca_cert.is_empty() || k.ca_key.is_empty()) {
        return Err((
            "cluster.ca_cert",
            "and cluster.ca_key must name the CA's PEM files (`chorus cluster-ca --out DIR` \
             makes them); or set cluster.insecure_local = true on loopback"
                .into(),
        ));
    }
    Ok(())
}

fn refusal_key(r: Refusal) -> (&'static str, String) {
    match r {
        Refusal::BadLabel { key, reason } => (key, reason),
        other => ("node.name", other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(name: &str) -> Join {
        Join {
            name: name.into(),
            region: "eu".into(),
            advertise: String::new(),
        }
    }

    #[test]
    fn nodes_of_other_regions_are_listed_at_their_advertised_address() {
        let mut r = Registry::new(10_000);
        let mut reg = |uuid: &str, name: &str, region: &str, advertise: &str, addr: &str| {
            let j = Join {
                name: name.into(),
                region: region.into(),
                advertise: advertise.into(),
            };
            let (id, _) = r.register(uuid, "t", j, 0).unwrap();
            r.start(id, addr);
            id
        };
        let a1 = reg("u1", "a1", "a", "127.0.0.1:9101", "127.0.0.1:7101");
        let a2 = reg("u2", "a2", "a", "", "127.0.0.1:7102");
        let b1 = reg("u3", "b1", "b", "127.0.0.1:9201", "127.0.0.1:7201");
        let addrs = |seen: Vec<Member>| seen.into_iter().map(|m| m.address).collect::<Vec<_>>();
        // Within a region: the own addresses; across: the advertised one
        // where set (a2 set none).
        assert_eq!(
            addrs(r.members_for(a1)),
            ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:9201"]
        );
        assert_eq!(addrs(r.members_for(a2)), addrs(r.members_for(a1)));
        assert_eq!(
            addrs(r.members_for(b1)),
            ["127.0.0.1:9101", "127.0.0.1:7102", "127.0.0.1:7201"]
        );
        // Unknown registration, or the plain list: own addresses.
        assert_eq!(
            addrs(r.members_for(99)),
            ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7201"]
        );
        assert_eq!(addrs(r.members()), addrs(r.members_for(99)));
    }

    #[test]
    fn names_are_unique_among_live_nodes_and_free_again_after_the_timeout() {
        let mut r = Registry::new(10_000);
        let (a, wa) = r.register("u1", "t1", join("a"), 0).unwrap();
        assert_eq!(r.start(a, "127.0.0.1:5000"), Some(1));
        let err = r.register("u2", "t2", join("a"), 5_000).unwrap_err();
        assert_eq!(
            err,
            Refusal::DuplicateName {
                name: "a".into(),
                node_id: Some(1)
            }
        );
        assert!(err.to_string().contains("node.name \"a\""));
        // Heard from at 9 s: still live at 15 s.
        assert_eq!(r.authenticate("u1", "t1", 9_000), Some(a));
        assert!(r.register("u3", "t3", join("a"), 15_000).is_err());
        // Silent since 9 s: gone at 19 s; the name and worker id are free.
        let (b, wb) = r.register("u4", "t4", join("a"), 19_000).unwrap();
        assert_ne!(a, b);
        assert_eq!(wa, wb);
        assert_eq!(
            r.start(b, "127.0.0.1:5001"),
            Some(2),
            "node ids are never reused"
        );
    }

    #[test]
    fn worker_ids_are_distinct_and_run_out() {
        let mut r = Registry::new(10_000);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..=u32::from(MAX_WORKER) {
            let (_, w) = r
                .register(&format!("u{i}"), "t", join(&format!("n{i}")), 0)
                .unwrap();
            assert!(seen.insert(w), "worker id {w} given twice");
        }
        assert_eq!(r.register("x", "t", join("x"), 0), Err(Refusal::NoWorkerId));
        // A clean stop frees its worker id at once.
        let first = 1;
        assert_eq!(r.stop(first).as_deref(), Some("n0"));
        assert_eq!(r.register("x", "t", join("x"), 0).map(|(_, w)| w), Ok(0));
    }

    #[test]
    fn calls_need_the_right_token_and_members_are_listed_once_started() {
        let mut r = Registry::new(10_000);
        let (a, _) = r.register("u1", "secret-token", join("a"), 0).unwrap();
        assert_eq!(r.authenticate("u1", "wrong-token!", 1), None);
        assert_eq!(r.authenticate("u2", "secret-token", 1), None);
        assert!(r.members().is_empty(), "not started yet");
        r.start(a, "127.0.0.1:7000");
        let m = r.members();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].node_name, "a");
        assert_eq!(m[0].region, "eu");
        assert_eq!(m[0].address, "127.0.0.1:7000");
        assert_eq!(r.stop(a).as_deref(), Some("a"));
        assert!(r.members().is_empty());
        assert_eq!(r.start(a, "x"), None);
    }

    #[test]
    fn a_restored_table_keeps_its_nodes_tokens_and_ids() {
        let mut r = Registry::new(10_000);
        let (a, wa) = r.register("u1", "token-a", join("a"), 0).unwrap();
        let (b, wb) = r.register("u2", "token-b", join("b"), 0).unwrap();
        assert_eq!(r.start(a, "127.0.0.1:7000"), Some(1));
        assert_eq!(r.start(b, "127.0.0.1:7001"), Some(2));
        let saved = r.snapshot().unwrap();
        // Restored long after the last call: every node gets a full
        // timeout to be heard from again.
        let mut back = Registry::restore(10_000, &saved, 500_000).unwrap();
        assert_eq!(back.members(), r.members());
        assert_eq!(back.authenticate("u1", "token-a", 505_000), Some(a));
        assert_eq!(back.authenticate("u2", "wrong-token", 505_000), None);
        // The name of a node heard from since the restore stays taken;
        // new ids are fresh.
        assert!(matches!(
            back.register("u3", "t", join("a"), 505_000),
            Err(Refusal::DuplicateName { .. })
        ));
        let (c, wc) = back.register("u3", "t", join("c"), 505_000).unwrap();
        assert!(c > b && wc != wa && wc != wb);
        assert_eq!(back.start(c, "127.0.0.1:7002"), Some(3));
        // b is not heard from again: dropped a timeout after the restore.
        let gone = back.expire(512_000);
        assert_eq!(gone, vec![("b".to_string(), Some(2))]);
        assert!(Registry::restore(10_000, "{not json", 0).is_err());

        // Restored again: b, never heard from, yields its name and worker id
        // to a new node b (restarted with the cluster); a, which polled, is
        // a duplicate.
        let mut again = Registry::restore(10_000, &saved, 600_000).unwrap();
        assert_eq!(again.authenticate("u1", "token-a", 600_001), Some(a));
        let (b2, wb2) = again.register("u9", "t9", join("b"), 600_002).unwrap();
        assert!(b2 > b);
        assert_eq!(wb2, wb);
        assert!(again.authenticate("u2", "token-b", 600_003).is_none());
        assert!(matches!(
            again.register("u8", "t8", join("a"), 600_004),
            Err(Refusal::DuplicateName { .. })
        ));
    }

    #[test]
    fn labels_are_checked() {
        let mut r = Registry::new(10_000);
        for bad in ["", "has space", &"x".repeat(65), "é"] {
            assert!(matches!(
                r.register("u", "t", join(bad), 0),
                Err(Refusal::BadLabel {
                    key: "node.name",
                    ..
                })
            ));
        }
    }

    fn cluster_config(pairs: &[(&str, &str)]) -> Config {
        let vars = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(None, vars).unwrap().config
    }

    #[test]
    fn a_node_in_a_cluster_needs_the_cql_store_and_a_secret_or_the_local_switch() {
        let c = cluster_config(&[("CHORUS_CONTROL", "127.0.0.1:3030")]);
        assert_eq!(check_node(&c).unwrap_err().0, "store.backend");
        let c = cluster_config(&[
            ("CHORUS_CONTROL", "127.0.0.1:3030"),
            ("CHORUS_STORE", "scylla"),
        ]);
        assert_eq!(check_node(&c).unwrap_err().0, "cluster.join_secret");
        let c = cluster_config(&[
            ("CHORUS_CONTROL", "127.0.0.1:3030"),
            ("CHORUS_STORE", "scylla"),
            ("CHORUS_CLUSTER_JOIN_SECRET", "0123456789abcdef"),
        ]);
        assert_eq!(check_node(&c), Ok(()));
        let c = cluster_config(&[
            ("CHORUS_CONTROL", "http://127.0.0.1:3030/"),
            ("CHORUS_STORE", "scylla"),
            ("CHORUS_CLUSTER_INSECURE_LOCAL", "true"),
        ]);
        assert_eq!(check_node(&c), Ok(()));
        let c = cluster_config(&[
            ("CHORUS_CONTROL", "10.0.0.5:3030"),
            ("CHORUS_STORE", "scylla"),
            ("CHORUS_CLUSTER_INSECURE_LOCAL", "true"),
        ]);
        assert_eq!(check_node(&c).unwrap_err().0, "cluster.control");
        let c = cluster_config(&[
            ("CHORUS_CONTROL", "127.0.0.1:3030"),
            ("CHORUS_STORE", "scylla"),
            ("CHORUS_CLUSTER_INSECURE_LOCAL", "true"),
            ("CHORUS_CLUSTER_BIND", "0.0.0.0:0"),
        ]);
        assert_eq!(check_node(&c).unwrap_err().0, "cluster.bind");
        let local = [
            ("CHORUS_CONTROL", "127.0.0.1:3030"),
            ("CHORUS_STORE", "scylla"),
            ("CHORUS_CLUSTER_INSECURE_LOCAL", "true"),
        ];
        for (advertise, ok) in [
            ("127.0.0.2:9000", true),
            ("proxy:9000", false),
            ("127.0.0.1:0", false),
            ("10.0.0.5:9000", false),
        ] {
            let mut pairs = local.to_vec();
            pairs.push(("CHORUS_CLUSTER_ADVERTISE", advertise));
            let got = check_node(&cluster_config(&pairs));
            assert_eq!(got.is_ok(), ok, "{advertise}: {got:?}");
            if !ok {
                assert_eq!(got.unwrap_err().0, "cluster.advertise");
            }
        }
    }

    #[test]
    fn a_control_server_needs_its_ca_unless_local() {
        let c = cluster_config(&[("CHORUS_CLUSTER_JOIN_SECRET", "0123456789abcdef")]);
        assert_eq!(check_control(&c).unwrap_err().0, "cluster.ca_cert");
        let c = cluster_config(&[("CHORUS_CLUSTER_INSECURE_LOCAL", "1")]);
        assert_eq!(check_control(&c), Ok(()));
        let c = cluster_config(&[
            ("CHORUS_CLUSTER_INSECURE_LOCAL", "1"),
            ("CHORUS_CLUSTER_CONTROL_BIND", "0.0.0.0:3030"),
        ]);
        assert_eq!(check_control(&c).unwrap_err().0, "cluster.control_bind");
    }

    #[test]
    fn control_urls_and_hosts() {
        assert_eq!(control_url("127.0.0.1:3030"), "http://127.0.0.1:3030/");
        assert_eq!(control_url("http://h:1"), "http://h:1/");
        assert!(is_loopback("http://[::1]:3030/"));
        assert!(is_loopback("localhost:1"));
        assert!(!is_loopback("example.com:1"));
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
    }
}
