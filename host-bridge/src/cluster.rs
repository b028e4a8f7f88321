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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chorus_core::cluster::{self, Join, Member};
use chorus_core::config::Config;
use lunatic_control::api::Registration;
use lunatic_distributed::distributed::server::ServerCtx;
use lunatic_distributed::{control, distributed, quic, DistributedProcessState};
use lunatic_process::env::LunaticEnvironments;
use lunatic_process::runtimes::wasmtime::WasmtimeRuntime;
use lunatic_process::runtimes::Modules;
use serde_json::json;

use crate::control::{JoinAnswer, JoinRequest, Members};

/// How often a node asks the control server for the members.
const POLL: Duration = Duration::from_secs(1);

/// This node's place in the cluster.
pub struct Cluster {
    pub node_id: u64,
    pub worker_id: u16,
    name: String,
    region: String,
    control_url: String,
    bind: SocketAddr,
    registration: Registration,
    key_pem: String,
    root_pem: String,
    pub dist: DistributedProcessState,
    members: RwLock<Vec<Member>>,
    control_reachable: AtomicBool,
    /// The node told the control server it leaves (a drain): it polls no
    /// more and lists itself no more.
    left: AtomicBool,
    /// `cluster.node_timeout_ms`: how long a message to another node waits
    /// for that node's acknowledgement before it is given up.
    send_timeout: Duration,
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
        let bind = free_udp(k.bind.parse()?)?;
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
            control = %control_url,
            "joined the cluster"
        );
        let cluster = Arc::new(Cluster {
            node_id,
            worker_id: answer.worker_id,
            name: config.node.name.clone(),
            region: k.region.clone(),
            control_url,
            bind,
            registration: reg,
            key_pem,
            root_pem,
            dist,
            members: RwLock::new(Vec::new()),
            control_reachable: AtomicBool::new(true),
            left: AtomicBool::new(false),
            send_timeout: Duration::from_millis(k.node_timeout_ms),
        });
        cluster.poll().await;
        tokio::spawn(cluster.clone().poll_forever());
        Ok(cluster)
    }

    /// Starts lunatic's QUIC node server: messages from other nodes reach
    /// the processes of `envs`.
    pub fn serve(&self, envs: Arc<LunaticEnvironments>, runtime: WasmtimeRuntime) {
        let ctx = ServerCtx {
            envs,
            modules: Modules::<crate::spawn::State>::default(),
            distributed: self.dist.clone(),
            runtime,
        };
        let server = distributed::server::node_server(
            ctx,
            self.bind,
            self.root_pem.clone(),
            self.registration.cert_pem_chain.clone(),
            self.key_pem.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = server.await {
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
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        members.retain(|m| m.id != self.node_id);
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
    /// forever when the node died but is still listed). The request is
    /// queued here, in call order (messages to one node keep their order:
    /// one QUIC stream per node, handled in order there), and its
    /// acknowledgement awaited by a task that gives up after
    /// `cluster.node_timeout_ms`. `false` when `node` is not a member.
    pub fn send(&self, node: u64, env: u64, pid: u64, tag: Option<i64>, data: Vec<u8>) -> bool {
        if !self.is_member(node) {
            return false;
        }
        let client = self.dist.node_client.clone();
        let mut ack =
            Box::pin(async move { client.message_process(node, env, pid, tag, data).await });
        // The first poll hands the request to lunatic's per-node queue (a
        // synchronous channel send), so the order of calls is kept.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if ack.as_mut().poll(&mut cx).is_pending() {
            let timeout = self.send_timeout;
            tokio::spawn(async move {
                if tokio::time::timeout(timeout, ack).await.is_err() {
                    tracing::debug!(node, "a message to another node was not acknowledged");
                }
            });
        }
        true
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

/// `/healthz`'s cluster part for a node outside any cluster.
pub fn single_json() -> serde_json::Value {
    json!({ "enabled": false })
}

/// `ip:0` becomes `ip:<a free UDP port>`: the address is handed to the
/// control server before the node server binds it.
fn free_udp(addr: SocketAddr) -> Result<SocketAddr> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let socket = UdpSocket::bind(addr).with_context(|| format!("cluster.bind {addr}"))?;
    Ok(socket.local_addr()?)
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
