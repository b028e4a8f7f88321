//! A node joining a cluster (`cluster.control` set): it registers with the
//! control server (`chorus control`, control.rs) under its `node.name` and
//! `cluster.region`, gets a certificate signed by the cluster's CA, a node
//! id and a Snowflake worker id, and starts lunatic's QUIC node server. Every
//! guest process then carries a `DistributedProcessState`, so lunatic's
//! distributed guest API works: `node_id()`, `nodes()`, and sends to a
//! process on another node (`lunatic::host::send(node, pid)`).
//!
//! Membership is polled from the control server every second (which also tells
//! the control server this node is alive); when the control server is gone
//! the node keeps serving its clients with the last membership it knew, and
//! says so in its log.

use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chorus_core::cluster::{self, Join, Member};
use chorus_core::config::Config;
use chorus_core::lanes::Lane;
use chorus_core::metrics::Metric;
use chorus_core::msg::{envelope, Onward, Part, RelayMsg, RELAY_PID};
use chorus_core::nodelink::{self, Limits, Outbox, Pushed};
use lunatic_control::api::Registration;
use lunatic_distributed::distributed::server::ServerCtx;
use lunatic_distributed::{control, distributed, quic, DistributedProcessState};
use lunatic_process::env::{Environment, LunaticEnvironment, LunaticEnvironments};
use lunatic_process::message::{DataMessage, Message};
use lunatic_process::runtimes::wasmtime::WasmtimeRuntime;
use lunatic_process::runtimes::Modules;
use lunatic_process::{Process, Signal};
use serde_json::json;

use crate::control::{JoinAnswer, JoinRequest, Members};
use crate::socket::Sockets;

/// How often a node asks the control server for the members.
const POLL: Duration = Duration::from_secs(1);

/// This node's place in the cluster.
pub struct Cluster {
    pub node_id: u64,
    pub worker_id: u16,
    name: String,
    region: String,
    control_url: String,
    registration: Registration,
    key_pem: String,
    root_pem: String,
    pub dist: DistributedProcessState,
    members: RwLock<Vec<Member>>,
    control_reachable: AtomicBool,
    /// The control server answered but refused this node's registration
    /// (401: it has no entry for it): the node is not a member any more.
    control_refused: AtomicBool,
    /// The node told the control server it leaves (a drain): it polls no
    /// more and lists itself no more.
    left: AtomicBool,
    /// The outboxes to the other nodes.
    links: Arc<Links>,
    /// Counts the changes of the membership [`Cluster::is_member`] reads;
    /// sessions with a channel on another node wait on it.
    changes: tokio::sync::watch::Sender<u64>,
    /// The QUIC server's socket, bound at the join, until [`Cluster::serve`]
    /// takes it.
    socket: Mutex<Option<UdpSocket>>,
}

impl Cluster {
    /// Joins the control server of `config` (retrying until
    /// `cluster.join_timeout_ms`); refusals (duplicate name, wrong secret)
    /// end the start at once with the control server's reason.
    pub async fn join(config: &Config) -> Result<Arc<Cluster>> {
        let k = &config.cluster;
        cluster::check_node(config).map_err(|(key, reason)| anyhow!("{key} {reason}"))?;
        if k.insecure_local {
            tracing::warn!(
                "INSECURE CLUSTER (cluster.insecure_local): joining {} with lunatic's public \
                 test CA and no join secret; loopback only, never in production",
                k.control
            );
        }
        // The QUIC server's socket is bound before the control server hears
        // of this address: a node that lists this one may send at once, and
        // its datagrams then wait in the socket until the server runs.
        let socket = server_socket(k.bind.parse()?, k.recv_buffer_bytes as usize)?;
        let bind = socket.local_addr()?;
        let uuid = uuid::Uuid::new_v4();
        let uuid_text = uuid.hyphenated().to_string();
        let node_cert = distributed::server::gen_node_cert(&uuid_text)?;
        let control_url = cluster::control_url(&k.control);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let request = JoinRequest {
            node_name: uuid,
            csr_pem: node_cert.serialize_request_pem()?,
            chorus: Join {
                name: config.node.name.clone(),
                region: k.region.clone(),
                advertise: k.advertise.clone(),
            },
        };
        let answer = register(
            &http,
            &control_url,
            &k.join_secret,
            &request,
            k.join_timeout_ms,
        )
        .await?;
        let root_pem = if k.insecure_local {
            lunatic_distributed::control::cert::TEST_ROOT_CERT.to_string()
        } else if !k.ca_cert.is_empty() {
            std::fs::read_to_string(&k.ca_cert)
                .with_context(|| format!("reading cluster.ca_cert {:?}", k.ca_cert))?
        } else {
            answer.registration.root_cert.clone()
        };
        let key_pem = node_cert.serialize_private_key_pem();
        let reg = answer.registration;
        let attributes = HashMap::from([
            ("name".to_string(), config.node.name.clone()),
            ("region".to_string(), k.region.clone()),
        ]);
        let control_client = control::Client::new(http, reg.clone(), bind, attributes)
            .await
            .with_context(|| format!("reporting this node to the control server {control_url}"))?;
        let node_id = control_client.node_id();
        let cert = reg
            .cert_pem_chain
            .first()
            .ok_or_else(|| anyhow!("the control server signed no certificate"))?;
        let quic_client = quic::new_quic_client(&root_pem, cert, &key_pem)
            .context("creating the QUIC client (mTLS) for the other nodes")?;
        let node_client =
            distributed::Client::new(node_id, control_client.clone(), quic_client).await?;
        let dist = DistributedProcessState::new(node_id, control_client, node_client).await?;
        tracing::info!(
            node_id,
            worker_id = answer.worker_id,
            quic = %bind,
            region = %k.region,
            advertise = %k.advertise,
            control = %control_url,
            "joined the cluster"
        );
        let cluster = Arc::new(Cluster {
            node_id,
            worker_id: answer.worker_id,
            name: config.node.name.clone(),
            region: k.region.clone(),
            control_url,
            registration: reg,
            key_pem,
            root_pem,
            members: RwLock::new(Vec::new()),
            control_reachable: AtomicBool::new(true),
            control_refused: AtomicBool::new(false),
            left: AtomicBool::new(false),
            links: Arc::new(Links {
                client: dist.node_client.clone(),
                timeout: Duration::from_millis(k.node_timeout_ms),
                limits: Limits {
                    batch_bytes: k.batch_bytes as usize,
                    in_flight: k.batches_in_flight as usize,
                    queue_bytes: usize::try_from(k.send_queue_bytes).unwrap_or(usize::MAX),
                },
                outboxes: Mutex::new(HashMap::new()),
                counts: Counts::default(),
            }),
            changes: tokio::sync::watch::Sender::new(0),
            dist,
            socket: Mutex::new(Some(socket)),
        });
        cluster.poll().await;
        tokio::spawn(cluster.clone().poll_forever());
        Ok(cluster)
    }

    /// Starts lunatic's QUIC node server: messages from other nodes reach
    /// the processes of `envs`, batches through the mailbag of `env`, and
    /// channels' frames for this node's `sockets` through its relay.
    pub fn serve(
        self: &Arc<Self>,
        envs: Arc<LunaticEnvironments>,
        env: &Arc<LunaticEnvironment>,
        runtime: WasmtimeRuntime,
        sockets: Arc<Sockets>,
    ) {
        env.add_process(
            MAILBAG_PID,
            Arc::new(Mailbag {
                env: Arc::downgrade(env),
            }),
        );
        env.add_process(
            RELAY_PID,
            Arc::new(Relay {
                sockets,
                cluster: Arc::downgrade(self),
                env: env.id(),
            }),
        );
        let ctx = ServerCtx {
            envs,
            modules: Modules::<crate::spawn::State>::default(),
            distributed: self.dist.clone(),
            runtime,
        };
        let Some(socket) = self.socket.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            tracing::error!("the cluster's QUIC node server was already started");
            return;
        };
        let endpoint = match server_endpoint(
            socket,
            &self.root_pem,
            &self.registration.cert_pem_chain,
            &self.key_pem,
        ) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("the cluster's QUIC node server did not start: {e:#}");
                return;
            }
        };
        tokio::spawn(async move {
            let mut endpoint = endpoint;
            if let Err(e) = quic::handle_node_server(&mut endpoint, ctx).await {
                tracing::error!("the cluster's QUIC node server stopped: {e:#}");
            }
        });
    }

    /// Tells the control server this node leaves (a clean exit, or the
    /// start of a drain): the control server drops it at once, so the other
    /// nodes' placement rings lose it at their next poll instead of after
    /// `cluster.node_timeout_ms`. This node then stops polling (the control
    /// server no longer knows it), keeps the other members it knew (its
    /// channels' subscribers there are still told where to rejoin) and no
    /// longer lists itself.
    pub async fn leave(&self) {
        if self.left.swap(true, Ordering::AcqRel) {
            return;
        }
        match self.dist.control.notify_node_stopped().await {
            Ok(()) => tracing::info!("left the cluster: the control server dropped this node"),
            Err(e) => tracing::warn!("could not tell the control server this node leaves: {e:#}"),
        }
        self.members
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|m| m.id != self.node_id);
        self.changed();
    }

    /// A receiver told of every change of the membership (this node's list
    /// and lunatic's, as [`Cluster::is_member`] reads them).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn poll(&self) {
        let got = self
            .dist
            .control
            .get::<Members>(&self.registration.urls.nodes, None)
            .await;
        if self.left.load(Ordering::Acquire) {
            return;
        }
        match got {
            Ok(list) => {
                if !self.control_reachable.swap(true, Ordering::AcqRel) {
                    tracing::info!(control = %self.control_url, "control server reachable again");
                }
                if self.control_refused.swap(false, Ordering::AcqRel) {
                    tracing::info!(control = %self.control_url, "control server knows this node again");
                }
                let after: Vec<u64> = list.nodes.iter().map(|m| m.id).collect();
                let changed = {
                    let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
                    let before: Vec<u64> = members.iter().map(|m| m.id).collect();
                    if before != after {
                        tracing::info!(nodes = ?list.nodes.iter().map(|m| (m.id, m.node_name.as_str())).collect::<Vec<_>>(), "cluster membership");
                    }
                    *members = list.nodes;
                    before != after
                };
                if changed {
                    self.links.keep_only(&after);
                }
                // lunatic's client re-reads the members only every 5 s, and
                // a node it does not list can be neither placed nor sent to:
                // without this, nodes would see a new member up to 5 s apart
                // and disagree meanwhile on the homes of its topics.
                let mut known = self.dist.control.node_ids();
                known.sort_unstable();
                let mut listed = after;
                listed.sort_unstable();
                if changed || known != listed {
                    if let Err(e) = self.dist.control.refresh_nodes().await {
                        tracing::debug!("refreshing lunatic's node list: {e:#}");
                    }
                    self.changed();
                }
            }
            Err(e) if refused(&e) => {
                // It answers, so it is reachable: but not for this node.
                if !self.control_reachable.swap(true, Ordering::AcqRel) {
                    tracing::info!(control = %self.control_url, "control server reachable again");
                }
                if !self.control_refused.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        control = %self.control_url,
                        node = %self.name,
                        "the control server refuses this node: it has no registration for it \
                         (dropped after cluster.node_timeout_ms without a poll, or a control \
                         server restarted without its data dir); the other nodes no longer \
                         list it. This node keeps serving its own clients with the last known \
                         members; restart it to rejoin the cluster"
                    );
                }
            }
            Err(e) => {
                if self.control_reachable.swap(false, Ordering::AcqRel) {
                    tracing::warn!(
                        control = %self.control_url,
                        "control server unreachable ({e:#}); this node keeps serving its \
                         clients and the last known members"
                    );
                }
            }
        }
    }

    async fn poll_forever(self: Arc<Self>) {
        while !self.left.load(Ordering::Acquire) {
            tokio::time::sleep(POLL).await;
            self.poll().await;
        }
    }

    /// Whether `node` may be sent to: a member as the control server last
    /// listed it AND a node lunatic's client knows (a send to a node id
    /// lunatic does not list spins refreshing its list).
    pub fn is_member(&self, node: u64) -> bool {
        self.members
            .read()
            .map(|m| m.iter().any(|m| m.id == node))
            .unwrap_or(false)
            && self.dist.control.node_info(node).is_some()
    }

    /// Sends a data message to process `pid` of environment `env` on
    /// `node` WITHOUT waiting for the other node: lunatic's own send awaits
    /// its acknowledgement (a round trip that blocks the sending process,
    /// forever when the node died but is still listed). The message joins
    /// `node`'s outbox ([`chorus_core::nodelink`]): it leaves with the rest of
    /// its burst (a flush scheduled after the tasks already ready) when
    /// fewer than `cluster.batches_in_flight` batches await their
    /// acknowledgement, else in the next batch; messages to one node keep
    /// their order (batches leave in order on lunatic's one QUIC stream per
    /// node and are unpacked in order there). `false` when `node` is not a
    /// member.
    pub fn send(&self, node: u64, env: u64, pid: u64, tag: Option<i64>, data: Vec<u8>) -> bool {
        if !self.is_member(node) {
            return false;
        }
        self.links.send(node, env, pid, tag, &data);
        true
    }

    /// The outboxes to the other nodes, for `/metrics`.
    pub fn outbox_stats(&self) -> OutboxStats {
        self.links.stats()
    }

    /// The known members (this node included).
    pub fn members(&self) -> Vec<Member> {
        self.members.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// The cluster part of `/healthz`.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "enabled": true,
            "node_id": self.node_id,
            "name": self.name,
            "region": self.region,
            "worker_id": self.worker_id,
            "control": self.control_url,
            "control_reachable": self.control_reachable.load(Ordering::Acquire),
            "control_refused": self.control_refused.load(Ordering::Acquire),
            "left": self.left.load(Ordering::Acquire),
            "nodes": self.members().iter().map(|m| json!({
                "id": m.id,
                "name": m.node_name,
                "region": m.region,
                "address": m.address,
                "worker_id": m.worker_id,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Whether a control-server call failed because the control server answered
/// 401: it does not know this node's registration (as opposed to not
/// answering at all).
fn refused(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<reqwest::Error>())
        .any(|r| r.status() == Some(reqwest::StatusCode::UNAUTHORIZED))
}

/// How long a batch holds its slot without an acknowledgement.
const SLOT_PATIENCE: Duration = Duration::from_secs(1);

/// The process id of every node's mailbag: lunatic's process ids count up
/// from 1, so this one is never a guest's.
pub const MAILBAG_PID: u64 = u64::MAX;

/// The messages of this node bound for the others, by (node, environment).
struct Links {
    client: distributed::Client,
    /// `cluster.node_timeout_ms`: how long a batch's acknowledgement is
    /// awaited (its slot is given back after [`SLOT_PATIENCE`] at most).
    timeout: Duration,
    limits: Limits,
    outboxes: Mutex<HashMap<(u64, u64), Outbox>>,
    counts: Counts,
}

/// What the outboxes did since the node started.
#[derive(Default)]
struct Counts {
    messages: AtomicU64,
    batches: AtomicU64,
    waits: AtomicU64,
    dropped: AtomicU64,
}

/// The `chorus_cluster_outbox_*` metrics: messages and bytes waiting for a
/// slot now, over all other nodes; counters since the start.
#[derive(Debug, Default, Clone, Copy)]
pub struct OutboxStats {
    pub queued_messages: u64,
    pub queued_bytes: u64,
    /// Messages queued for another node.
    pub messages: u64,
    /// Batches handed to lunatic.
    pub batches: u64,
    /// Messages that found every slot busy and waited for a later batch.
    pub waits: u64,
    /// Messages dropped at `cluster.send_queue_bytes`.
    pub dropped: u64,
}

impl Links {
    fn send(self: &Arc<Self>, node: u64, env: u64, pid: u64, tag: Option<i64>, data: &[u8]) {
        let mut outboxes = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
        let outbox = outboxes
            .entry((node, env))
            .or_insert_with(|| Outbox::new(self.limits));
        let waits = outbox.busy();
        let pushed = outbox.push(pid, tag, data);
        let counter = match pushed {
            Pushed::Queued { .. } if waits => Some(&self.counts.waits),
            Pushed::Queued { .. } => None,
            Pushed::Dropped { .. } => Some(&self.counts.dropped),
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Pushed::Queued { .. } = pushed {
            self.counts.messages.fetch_add(1, Ordering::Relaxed);
        }
        match pushed {
            Pushed::Queued { dropped: 0 } => {}
            Pushed::Queued { dropped } => tracing::warn!(
                node,
                dropped,
                "messages to another node flow again after {dropped} were dropped \
                 (cluster.send_queue_bytes)"
            ),
            Pushed::Dropped { first: true } => tracing::warn!(
                node,
                queued = outbox.queued(),
                "messages to another node are dropped: {} bytes already wait for its \
                 acknowledgements (cluster.send_queue_bytes)",
                outbox.queued()
            ),
            Pushed::Dropped { first: false } => {}
        }
        if outbox.wants_flush() {
            // After the tasks already ready: the rest of this burst (this
            // process's other sends, other processes' under load) joins
            // the batch.
            let links = self.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                links.flush(node, env);
            });
        }
    }

    /// The flush a burst of sends scheduled: the batches that have a slot
    /// leave.
    fn flush(self: &Arc<Self>, node: u64, env: u64) {
        let mut outboxes = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(outbox) = outboxes.get_mut(&(node, env)) {
            outbox.flushing();
            self.pump(outbox, node, env);
        }
    }

    /// Sends the batches `outbox` has slots for. Called with the outboxes
    /// locked: the first poll of lunatic's send queues the request on its
    /// per-node channel, so batches enter it in the order they left.
    fn pump(self: &Arc<Self>, outbox: &mut Outbox, node: u64, env: u64) {
        while let Some((batch, _)) = outbox.take() {
            self.counts.batches.fetch_add(1, Ordering::Relaxed);
            let client = self.client.clone();
            let mut ack: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
                client
                    .message_process(node, env, MAILBAG_PID, None, batch)
                    .await
            });
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if ack.as_mut().poll(&mut cx).is_ready() {
                // lunatic's client is gone (the node is stopping).
                outbox.done();
                continue;
            }
            let links = self.clone();
            tokio::spawn(async move {
                // The slot is given back after `SLOT_PATIENCE` even without
                // an acknowledgement (slots only pace the batches; lunatic
                // drops an acknowledgement that beats its bookkeeping), and
                // the acknowledgement is awaited on until the node timeout.
                let patience = SLOT_PATIENCE.min(links.timeout);
                let first = tokio::time::timeout(patience, &mut ack).await;
                links.free(node, env);
                let got = match first {
                    Ok(got) => Ok(got),
                    Err(_) => tokio::time::timeout(links.timeout - patience, ack).await,
                };
                match got {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(node, "a batch to another node was refused: {e:?}")
                    }
                    Err(_) => {
                        tracing::debug!(node, "a batch to another node was not acknowledged")
                    }
                }
            });
        }
    }

    /// A batch's slot is free: the next batch may leave.
    fn free(self: &Arc<Self>, node: u64, env: u64) {
        let mut outboxes = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(outbox) = outboxes.get_mut(&(node, env)) {
            outbox.done();
            self.pump(outbox, node, env);
        }
    }

    fn stats(&self) -> OutboxStats {
        let (queued_messages, queued_bytes) = {
            let outboxes = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
            outboxes.values().fold((0, 0), |(m, b), o| {
                (m + o.queued_messages() as u64, b + o.queued() as u64)
            })
        };
        let c = &self.counts;
        OutboxStats {
            queued_messages,
            queued_bytes,
            messages: c.messages.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            waits: c.waits.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }

    /// Forgets the outboxes to nodes that are no longer members (what they
    /// held is dropped, as lunatic drops what it sends to a lost node).
    fn keep_only(&self, members: &[u64]) {
        let mut outboxes = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
        outboxes.retain(|(node, _), _| members.contains(node));
    }
}

/// The process [`MAILBAG_PID`] of a node: it unpacks each batch another
/// node sent and hands its messages to their processes, in order.
struct Mailbag {
    env: Weak<LunaticEnvironment>,
}

impl Process for Mailbag {
    fn id(&self) -> u64 {
        MAILBAG_PID
    }

    fn send(&self, signal: Signal) {
        let Signal::Message(Message::Data(DataMessage { buffer, .. })) = signal else {
            return;
        };
        let Some(env) = self.env.upgrade() else {
            return;
        };
        for entry in nodelink::entries(&buffer) {
            match entry {
                Ok(e) => {
                    // Like lunatic's own send: a message to a process that
                    // is gone is dropped.
                    if let Some(p) = env.get_process(e.pid) {
                        p.send(Signal::Message(Message::Data(DataMessage::new_from_vec(
                            e.tag,
                            e.data.to_vec(),
                        ))));
                    }
                }
                Err(t) => tracing::warn!(
                    at = t.at,
                    len = buffer.len(),
                    "a batch from another node ends in a malformed entry: the rest is dropped"
                ),
            }
        }
    }
}

/// The node's relay, process [`RELAY_PID`]: queues on this node's sockets
/// what channels on other nodes send them (`src/relay.rs`), natively, in
/// the order the messages come (one channel's reach it in order: one
/// outbox per node, one mailbag). As the hub of a channel homed in another
/// region it also forwards the other nodes' parts of its region
/// (`core::relay::regional`).
struct Relay {
    sockets: Arc<Sockets>,
    cluster: Weak<Cluster>,
    /// This node's environment (the other nodes' relays are in theirs, with
    /// the same id).
    env: u64,
}

impl Process for Relay {
    fn id(&self) -> u64 {
        RELAY_PID
    }

    fn send(&self, signal: Signal) {
        let Signal::Message(Message::Data(DataMessage { buffer, .. })) = signal else {
            return;
        };
        // A supervised child's mail: its envelope's variant 0, then the
        // message (`chorus_core::msg::envelope`).
        let decoded = match buffer.split_first_chunk::<4>() {
            Some((&[0, 0, 0, 0], msg)) => bincode::deserialize::<RelayMsg>(msg).ok(),
            _ => None,
        };
        match decoded {
            Some(RelayMsg::Frames {
                lane,
                topic,
                key,
                parts,
            }) => {
                for part in parts {
                    self.sockets
                        .fanout(None, &part.sockets, lane, &topic, &key, &part.bytes);
                }
            }
            Some(RelayMsg::Region {
                lane,
                topic,
                key,
                frames,
                onward,
            }) => self.forward(lane, &topic, &key, &frames, onward),
            None => tracing::warn!(
                len = buffer.len(),
                "the relay dropped a message that is not a relay message"
            ),
        }
    }
}

impl Relay {
    /// A hub's share of a region's fan-out: this node's part queued here,
    /// every other node's sent on to its relay as `Frames`, in order.
    fn forward(
        &self,
        lane: Lane,
        topic: &str,
        key: &str,
        frames: &[serde_bytes::ByteBuf],
        onward: Vec<Onward>,
    ) {
        let cluster = self.cluster.upgrade();
        for o in onward {
            let parts = o
                .parts
                .into_iter()
                .filter_map(|(i, sockets)| frames.get(i as usize).map(|bytes| (bytes, sockets)));
            if cluster.as_ref().is_some_and(|c| c.node_id == o.node) {
                for (bytes, sockets) in parts {
                    self.sockets.fanout(None, &sockets, lane, topic, key, bytes);
                }
                continue;
            }
            let Some(cluster) = &cluster else { continue };
            let msg = RelayMsg::Frames {
                lane,
                topic: topic.to_string(),
                key: key.to_string(),
                parts: parts
                    .map(|(bytes, sockets)| Part {
                        bytes: bytes.to_vec(),
                        sockets,
                    })
                    .collect(),
            };
            match envelope(&msg) {
                Ok(data) => {
                    if cluster.send(o.node, self.env, o.relay, None, data) {
                        self.sockets
                            .metrics()
                            .add(RELAY_PID, Metric::RegionForwards, 1);
                    }
                }
                Err(e) => tracing::warn!("a relay message could not be encoded: {e}"),
            }
        }
    }
}

/// `/healthz`'s cluster part for a node outside any cluster.
pub fn single_json() -> serde_json::Value {
    json!({ "enabled": false })
}

/// The QUIC endpoint of this node's server: mutual TLS (a peer must show a
/// certificate of the cluster's CA, `root_pem`), bidirectional streams
/// only, as lunatic's node client speaks, on `socket` ([`server_socket`]).
fn server_endpoint(
    socket: UdpSocket,
    root_pem: &str,
    chain_pem: &[String],
    key_pem: &str,
) -> Result<quinn::Endpoint> {
    let mut roots = rustls::RootCertStore::empty();
    for der in pem_certs(root_pem)? {
        roots.add(&der)?;
    }
    let mut chain = Vec::new();
    for pem in chain_pem {
        chain.extend(pem_certs(pem)?);
    }
    let key = rustls_pemfile::pkcs8_private_keys(&mut key_pem.as_bytes())?
        .into_iter()
        .next()
        .map(rustls::PrivateKey)
        .ok_or_else(|| anyhow!("the node's key is not a PKCS#8 PEM key"))?;
    let tls = rustls::ServerConfig::builder()
        .with_safe_defaults()
        .with_client_cert_verifier(rustls::server::AllowAnyAuthenticatedClient::new(roots))
        .with_single_cert(chain, key)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(tls));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_uni_streams(0u8.into());
    config.transport_config(Arc::new(transport));
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        quinn::TokioRuntime,
    )?)
}

/// The UDP socket of this node's QUIC server, bound to `bind` (`ip:0`: a
/// free port), with a receive buffer of `recv_buffer` bytes
/// (`cluster.recv_buffer_bytes`). With the system's default buffer (208 KiB)
/// a node busy for a few milliseconds let the datagrams of the other nodes
/// overflow it, and QUIC's loss recovery then held every message to the
/// node back for seconds (bench/results/xnode-20261130).
fn server_socket(bind: SocketAddr, recv_buffer: usize) -> Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_recv_buffer_size(recv_buffer)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&bind.into())
        .with_context(|| format!("cluster.bind {bind}"))?;
    let got = socket.recv_buffer_size()?;
    if got < recv_buffer {
        tracing::warn!(
            asked = recv_buffer,
            got,
            "the kernel capped the QUIC server's UDP receive buffer (net.core.rmem_max): \
             raise net.core.rmem_max to cluster.recv_buffer_bytes (deploy/60-chorus.conf), \
             or datagrams from the other nodes may be dropped while this node is busy"
        );
    } else {
        tracing::debug!(got, "QUIC server UDP receive buffer");
    }
    Ok(socket.into())
}

/// The DER certificates of a PEM text.
fn pem_certs(pem: &str) -> Result<Vec<rustls::Certificate>> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())?;
    if certs.is_empty() {
        bail!("no certificate in a PEM text of the cluster");
    }
    Ok(certs.into_iter().map(rustls::Certificate).collect())
}

/// Registers, retrying while the control server cannot be reached; a
/// refusal ends it at once.
async fn register(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    request: &JoinRequest,
    timeout_ms: u64,
) -> Result<JoinAnswer> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let mut post = http.post(url).json(request);
        if !secret.is_empty() {
            post = post.bearer_auth(secret);
        }
        let failure = match post.send().await {
            Ok(resp) if resp.status().is_success() => {
                return resp
                    .json::<JoinAnswer>()
                    .await
                    .with_context(|| format!("{url} answered something other than a registration: is cluster.control a chorus control server?"));
            }
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                let reason = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(body);
                bail!("the control server {url} refused this node ({status}): {reason}");
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            bail!(
                "cannot reach the control server at {url} (cluster.control) within \
                 cluster.join_timeout_ms = {timeout_ms}: {failure}"
            );
        }
        tracing::warn!(
            attempt,
            "cannot reach the control server at {url} ({failure}); retrying until \
             cluster.join_timeout_ms = {timeout_ms}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
