//! Node configuration: `lunatic.toml`, overridden key by key by `CHORUS_*`
//! environment variables.
//!
//! Pure: the caller reads the file and the environment and hands both in, so
//! the precedence rules and every error message are unit-tested here. Every
//! limit the node enforces is a key with a default (NATS' habit): hitting it
//! produces a message naming the key.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The whole configuration of one node. Field names are the TOML keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub presence: PresenceConfig,
    pub rooms: RoomsConfig,
    pub modules: ModulesConfig,
    pub runtime: RuntimeConfig,
    pub cluster: ClusterConfig,
}

/// Where the node listens and keeps its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name of this node on the channel hash ring.
    pub name: String,
    /// Address the WebSocket and HTTP listener binds.
    pub host: String,
    /// Port of the WebSocket and HTTP listener (one port for both).
    pub port: u16,
    /// Directory for the embedded store and other node files.
    pub data_dir: String,
    /// The demo room's files (`scripts/run.sh` builds them), served at
    /// `/demo/`; empty: no demo.
    pub demo_dir: String,
    /// Test-only fault injection: a client may crash its own session with
    /// the `chorus_crash` event on topic `phoenix`, a joined topic's channel
    /// (`chorus_crash_channel`) or a presence shard (`chorus_crash_presence`).
    /// Never enable in production.
    pub fault_injection: bool,
    /// Browser origins allowed to open a WebSocket (`Origin` header, e.g.
    /// `https://app.example.com`); empty allows every origin. Clients that
    /// send no `Origin` (servers, native apps) are not affected.
    pub allowed_origins: Vec<String>,
    /// This node's Snowflake worker id (0..=1023), part of every message id
    /// it assigns: nodes that share a store must each have their own, or
    /// their ids could collide (the store then refuses the second write).
    pub worker_id: u32,
    /// A drain (SIGTERM, or `POST /realtime/v1/api/drain`) ends with the
    /// process's exit within this long, whatever is still open.
    pub shutdown_timeout_ms: u64,
    /// During a drain, WebSocket connections closed (1001) per batch.
    pub drain_batch_size: u32,
    /// During a drain, the pause between two batches of closes.
    pub drain_batch_interval_ms: u64,
    /// Agree to `permessage-deflate` when a client offers it (without
    /// context takeover: no compression state per socket).
    pub permessage_deflate: bool,
    /// With `permessage-deflate`, messages whose payload is shorter than
    /// this are sent uncompressed.
    pub deflate_min_bytes: u32,
    /// A fan-out to at least `fanout_write_delay_sockets` sockets wakes
    /// their writers this long after queuing its frame, so the frames of
    /// the fan-outs that follow meanwhile go out in the same write (0: at
    /// once).
    pub fanout_write_delay_ms: u32,
    /// The longest that delay becomes when writing a delayed fan-out takes
    /// longer than half of it (never below `fanout_write_delay_ms`).
    pub fanout_write_delay_max_ms: u32,
    /// Fan-outs to fewer sockets than this (small rooms) are written at
    /// once.
    pub fanout_write_delay_sockets: u32,
}

/// Which backend the data service uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite` (embedded, default) or `scylla` (any CQL database).
    pub backend: String,
    /// CQL contact points, `host:port`.
    pub scylla_nodes: Vec<String>,
    /// CQL keyspace, created on start if missing.
    pub keyspace: String,
    /// Replication factor of the keyspace when the node creates it
    /// (`SimpleStrategy`). Writes use QUORUM of it.
    pub replication_factor: u32,
    /// Room-state cache lifetime in the data service.
    pub room_state_ttl_ms: u64,
}

/// Authentication of sockets and joins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secret. Empty: the node runs open (and says so at start).
    pub jwt_secret: String,
    /// Topic policies authorizing joins, sends and tracks on private
    /// topics (`[[auth.policies]]`, see `crate::policy`); enforced when
    /// `jwt_secret` is set. Env: `CHORUS_AUTH_POLICIES` as a JSON list.
    pub policies: Vec<crate::policy::PolicyConfig>,
}

/// Per-session and per-channel limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// A socket silent for this long is closed.
    pub heartbeat_timeout_ms: u64,
    /// Topics one socket may join at once.
    pub max_channels_per_socket: u32,
    /// Channel processes one node runs at once; a join that would start one
    /// more is refused (`too_many_channels`). Enforced per directory shard
    /// (this divided by the shards, rounded up).
    pub max_channels: u32,
    /// Channels one socket may start per second (a token bucket with this
    /// burst): a join of a topic nobody has open costs a token, a join of a
    /// running channel none. Past it the join is refused
    /// (`channel_creation_rate_limited`).
    pub channel_creations_per_second: u32,
    /// How long a chat lane remembers a client message id (`msg_id` in the
    /// broadcast payload) to answer a retry without storing or delivering
    /// it again.
    pub dedupe_window_ms: u64,
    /// Bytes of remembered message ids one chat lane holds (the oldest go
    /// first past it).
    pub dedupe_bytes: u32,
    /// Largest broadcast/presence payload accepted (`payload_size_exceeded`).
    pub max_payload_bytes: u32,
    /// Largest WebSocket message accepted; larger closes the socket (1009).
    pub max_frame_bytes: u32,
    /// Largest HTTP request head before the request is refused with 400/431.
    pub max_http_head_bytes: u32,
    /// A channel with no subscriber stops this long after its last one
    /// left when it remembers client message ids (`dedupe_window_ms`), so a
    /// retry after a reconnect is still recognised (`crate::linger`).
    pub channel_idle_ms: u64,
    /// A channel with no subscriber that remembers no client message id
    /// stops this long after its last one left (`crate::linger`).
    pub channel_empty_ms: u64,
    /// Messages a channel keeps in memory for late joiners and replay.
    pub channel_history: u32,
    /// Client messages one socket may send per second (token bucket refill);
    /// over it a push is refused with `rate_limited`. Heartbeats and leaves
    /// are exempt.
    pub client_messages_per_second: u32,
    /// Burst of the per-socket token bucket.
    pub client_burst: u32,
    /// Frames one socket may have queued on its control/audio or chat lane
    /// before it is closed as a slow consumer (1008 `slow_consumer`).
    pub outlet_queue_frames: u32,
    /// Unwritten reaction frames one socket may have queued; past it new
    /// reactions are counted and delivered as one `reaction_counts` frame.
    pub reaction_queue_frames: u32,
    /// Connections the kernel queues for the acceptor (the listen backlog;
    /// Linux caps it at `net.core.somaxconn`). Too small a queue refuses
    /// clients during connect storms.
    pub listen_backlog: u32,
    /// Deepest nesting of arrays and objects a client's JSON may have
    /// (payloads and frames); deeper frames are refused with a reason.
    /// Guest processes run on small stacks, and parsers recurse per level.
    pub max_json_depth: u32,
    /// Client messages the host holds for a session that has not taken them
    /// yet; past it the host stops reading that socket until the session
    /// catches up (TCP backpressure on that client only).
    pub inlet_queue_messages: u32,
    /// Bytes of client messages the host holds for a session that has not
    /// taken them yet; past it the host stops reading that socket.
    pub inlet_queue_bytes: u32,
    /// Total time a client has to send its whole HTTP request head (not per
    /// read: a byte every few seconds does not keep a connection open).
    pub http_head_timeout_ms: u64,
    /// Total time a client has to send an HTTP request body.
    pub http_body_timeout_ms: u64,
    /// Open connections one IP address may hold; more are refused (503 with
    /// the key named) before their head is read.
    pub max_connections_per_ip: u32,
    /// Connections still sending their request head (not yet upgraded or
    /// answered), node-wide; more are refused at once.
    pub max_pending_connections: u32,
    /// Byte budgets of client data (see `crate::budget`, which checks at
    /// start that one channel's share fits `runtime.process_memory_mib`).
    /// Payload bytes a channel keeps in its in-memory recent history.
    pub channel_history_bytes: u32,
    /// Most payload bytes in one history answer of the data service: a REST
    /// history page, a join's replay, a channel's refill. A longer answer
    /// stops early; page on with `before=`.
    pub history_page_bytes: u32,
    /// Presence keys plus metas one channel holds.
    pub presence_bytes: u32,
    /// Longest presence key.
    pub presence_key_bytes: u32,
    /// Largest room state (JSON text), e.g. through `PUT …/rooms/<id>`.
    pub room_state_bytes: u32,
    /// Bytes one socket's outbound queue may hold (host memory, all lanes):
    /// past it the socket is closed as a slow consumer, and reactions are
    /// counted instead of queued.
    pub outlet_queue_bytes: u32,
}

/// Presence shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Number of presence shard processes users are hashed onto.
    pub shards: u32,
    /// Most keys one client may hold in a selective presence subscription
    /// (`presence_subscribe`), and may ask about in one `presence_online`.
    pub max_subscribed_keys: u32,
    /// Members above which a channel is a large room: clients without a
    /// subscription get the member count and a relevant set, not everyone.
    pub large_room_threshold: u32,
    /// Size of a relevant set (host, friends, recent chatters, a sample).
    pub relevant_set_size: u32,
    /// How long a member who published counts as a recent chatter.
    pub recent_chat_ms: u64,
    /// Bytes one presence shard may hold from OTHER nodes' reports (their
    /// copies and deltas, each key counted as its bytes plus
    /// `core::online::ENTRY_BYTES`); a key past it is refused, with a
    /// logged reason.
    pub remote_bytes: u32,
}

/// WhatsSound rooms: peak mode (each channel measures its message rate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// Messages per second (over the last second) above which a channel
    /// enters peak mode.
    pub peak_enter_per_s: u32,
    /// Rate below which a channel in peak mode starts counting down to leave.
    pub peak_exit_per_s: u32,
    /// How long the rate must stay below `peak_exit_per_s` to leave.
    pub peak_exit_after_ms: u64,
    /// In peak mode, chat deliveries go out at most once per this period
    /// (one `batch` frame to opted-in clients, one coalesced write to others).
    pub peak_batch_ms: u64,
    /// In peak mode, presence diffs are merged over this period.
    pub peak_presence_merge_ms: u64,
    /// In peak mode, reactions are delivered as counts once per this period.
    pub peak_reaction_interval_ms: u64,
}

/// Process modules: WebAssembly files loaded at run time from `dir`, each
/// run by a supervised process (docs/MODULES.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModulesConfig {
    /// Directory of `<name>.wasm` modules (and their `<name>.toml`
    /// settings), read at start and on reload; empty: no modules.
    pub dir: String,
    /// Modules asked first, in this order, and asked even when they did not
    /// load (then `fail_open` decides); the other loaded modules follow by
    /// name.
    pub enabled: Vec<String>,
    /// How long a channel waits for a module's verdict before applying
    /// `fail_open`.
    pub timeout_ms: u64,
    /// When a module does not answer in time: deliver (`true`) or refuse.
    pub fail_open: bool,
    /// WebAssembly instructions a module may run for one message; past it
    /// the module is stopped (a crash).
    pub fuel_per_message: u64,
    /// Largest linear memory of a module instance, in MiB.
    pub memory_mib: u32,
    /// Crashes of one module within 10 s after which it is disabled until
    /// the next reload.
    pub crash_limit: u32,
    /// Largest `.wasm` file the node loads, in MiB.
    pub max_file_mib: u32,
}

/// Cluster membership (lunatic's distributed mode): `chorus control` runs
/// the control server; a node with `control` set joins it. Empty `control`
/// is a single node, as before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The control server a node joins, `host:port` (or `http://host:port/`);
    /// empty: no cluster (a single node).
    pub control: String,
    /// Where `chorus control` listens (HTTP, `host:port`).
    pub control_bind: String,
    /// This node's QUIC address for the other nodes (UDP `ip:port`, port 0 =
    /// a free one); it is also the address the control server hands out, so
    /// it must be a specific IP the other nodes can reach.
    pub bind: String,
    /// This node's region label (shown in membership; a channel's fan-out
    /// crosses to each other region once, `crate::relay::regional`).
    pub region: String,
    /// The QUIC address nodes of OTHER regions dial to reach this node
    /// (`ip:port` of a NAT, public address or latency proxy in front of
    /// `cluster.bind`); empty: `cluster.bind` for every node.
    pub advertise: String,
    /// PEM certificate of the cluster's CA. The control server signs node
    /// certificates with it; a node that has it trusts only it.
    pub ca_cert: String,
    /// PEM private key of the CA (control server only).
    pub ca_key: String,
    /// Shared secret a node presents to join; the control server signs no
    /// certificate without it.
    pub join_secret: String,
    /// UNAUTHENTICATED local cluster: lunatic's public test CA and no join
    /// secret. Loopback addresses only; for development and tests.
    pub insecure_local: bool,
    /// How long a starting node keeps trying to reach the control server
    /// before it exits with an error.
    pub join_timeout_ms: u64,
    /// The control server drops a node it has not heard from for this long
    /// (nodes report every second), freeing its name and worker id.
    pub node_timeout_ms: u64,
    /// Messages to another node gather into batches of at most this many
    /// bytes while earlier batches await acknowledgement
    /// (`crate::nodelink`).
    pub batch_bytes: u32,
    /// Batches to one node sent and not yet acknowledged at once.
    pub batches_in_flight: u32,
    /// Bytes of messages to one node that may wait for a batch slot; a
    /// message past it is dropped, with a logged reason.
    pub send_queue_bytes: u64,
    /// Receive buffer asked for the UDP socket of this node's QUIC server
    /// (what the other nodes send it); the kernel caps it at
    /// `net.core.rmem_max`.
    pub recv_buffer_bytes: u32,
}

/// The host's wasmtime settings (read by the native host only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Process slots the pooling allocator reserves: the most processes alive at once.
    pub max_processes: u32,
    /// Largest linear memory of one process, in MiB.
    pub process_memory_mib: u32,
    /// Native stack of one process (wasm frames and host calls), in KiB.
    pub process_stack_kib: u32,
    /// What a freed process slot keeps resident for the next process in it
    /// (of its linear memory, table and native stack), in KiB; the rest is
    /// returned to the system when the process ends. 0 = everything.
    pub freed_slot_resident_kib: u32,
    /// `vm.max_map_count` the node needs; raised at start when running as root.
    pub min_max_map_count: u64,
    /// Where compiled guests are cached, so a restart skips compilation:
    /// empty = `$XDG_CACHE_HOME/chorus` (else `~/.cache/chorus`), `off` = no cache.
    pub module_cache: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: "chorus-1".into(),
            host: "127.0.0.1".into(),
            port: 4000,
            data_dir: "./data".into(),
            demo_dir: "clients/demo/dist".into(),
            fault_injection: false,
            allowed_origins: Vec::new(),
            worker_id: 1,
            shutdown_timeout_ms: 30_000,
            drain_batch_size: 500,
            drain_batch_interval_ms: 100,
            permessage_deflate: true,
            deflate_min_bytes: 256,
            fanout_write_delay_ms: 30,
            fanout_write_delay_max_ms: 250,
            fanout_write_delay_sockets: 256,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            control: String::new(),
            control_bind: "127.0.0.1:3030".into(),
            bind: "127.0.0.1:0".into(),
            region: "local".into(),
            advertise: String::new(),
            ca_cert: String::new(),
            ca_key: String::new(),
            join_secret: String::new(),
            insecure_local: false,
            join_timeout_ms: 30_000,
            node_timeout_ms: 15_000,
            batch_bytes: 64 * 1024,
            batches_in_flight: 4,
            send_queue_bytes: 64 * 1024 * 1024,
            recv_buffer_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: "sqlite".into(),
            scylla_nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "chorus".into(),
            replication_factor: 1,
            room_state_ttl_ms: 5_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            heartbeat_timeout_ms: 60_000,
            max_channels_per_socket: 100,
            max_channels: 50_000,
            channel_creations_per_second: 20,
            dedupe_window_ms: 300_000,
            dedupe_bytes: 256 * 1024,
            max_payload_bytes: 256 * 1024,
            max_frame_bytes: 5 * 1024 * 1024,
            max_http_head_bytes: 16 * 1024,
            channel_idle_ms: 30_000,
            channel_empty_ms: 1_000,
            channel_history: 100,
            client_messages_per_second: 100,
            client_burst: 200,
            outlet_queue_frames: 4096,
            reaction_queue_frames: 64,
            listen_backlog: 4096,
            max_json_depth: 32,
            inlet_queue_messages: 64,
            inlet_queue_bytes: 1024 * 1024,
            http_head_timeout_ms: 10_000,
            http_body_timeout_ms: 10_000,
            max_connections_per_ip: 10_000,
            max_pending_connections: 4096,
            channel_history_bytes: 2 * 1024 * 1024,
            history_page_bytes: 1024 * 1024,
            presence_bytes: 1024 * 1024,
            presence_key_bytes: 256,
            room_state_bytes: 64 * 1024,
            outlet_queue_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            shards: 16,
            max_subscribed_keys: 500,
            large_room_threshold: 200,
            relevant_set_size: 50,
            recent_chat_ms: 60_000,
            remote_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            peak_enter_per_s: 100,
            peak_exit_per_s: 50,
            peak_exit_after_ms: 2_000,
            peak_batch_ms: 50,
            peak_presence_merge_ms: 1_000,
            peak_reaction_interval_ms: 500,
        }
    }
}

impl Default for ModulesConfig {
    fn default() -> Self {
        Self {
            dir: String::new(),
            enabled: Vec::new(),
            timeout_ms: 200,
            fail_open: true,
            fuel_per_message: 50_000_000,
            memory_mib: 32,
            crash_limit: 5,
            max_file_mib: 16,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_processes: 110_000,
            process_memory_mib: 16,
            process_stack_kib: 128,
            freed_slot_resident_kib: 0,
            min_max_map_count: 1_048_576,
            module_cache: String::new(),
        }
    }
}

/// Short environment names for the keys operators set most, as documented in
/// the README. Every key also has the long form `CHORUS_<SECTION>_<KEY>`.
const ALIASES: &[(&str, &str)] = &[
    ("CHORUS_HOST", "node.host"),
    ("CHORUS_PORT", "node.port"),
    ("CHORUS_DATA_DIR", "node.data_dir"),
    ("CHORUS_NODE_NAME", "node.name"),
    ("CHORUS_STORE", "store.backend"),
    ("CHORUS_SCYLLA_NODES", "store.scylla_nodes"),
    ("CHORUS_JWT_SECRET", "auth.jwt_secret"),
    ("CHORUS_CONTROL", "cluster.control"),
    ("CHORUS_REGION", "cluster.region"),
];

/// Environment variables with the `CHORUS_` prefix that are not config keys
/// (used by tools and tests); they are neither applied nor warned about.
const NOT_KEYS: &[&str] = &[
    "CHORUS_BIN",
    "CHORUS_CONFIG",
    "CHORUS_GUEST",
    "CHORUS_LOG_FORMAT",
];

/// A configuration problem, always naming the key and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The file or environment variable the bad value came from.
    pub source: String,
    /// The offending key, dotted (`limits.max_payload_bytes`), when known.
    pub key: Option<String>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: key `{}`: {}", self.source, key, self.reason),
            None => write!(f, "{}: {}", self.source, self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The result of loading: the config plus warnings worth logging.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    /// Parses a TOML document; `source` names it in errors (usually the path).
    pub fn from_toml(text: &str, source: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let reason = e.message().to_string();
            ConfigError {
                source: source.to_string(),
                key: unknown_field_path(text, &reason)
                    .or_else(|| e.span().and_then(|span| key_at(text, span.start))),
                reason,
            }
        })?;
        config.validate(source)?;
        Ok(config)
    }

    /// Loads from an optional TOML text, then applies `CHORUS_*` variables.
    pub fn load<I>(toml_text: Option<(&str, &str)>, env: I) -> Result<Loaded, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut config = match toml_text {
            Some((text, source)) => Config::from_toml(text, source)?,
            None => Config::default(),
        };
        let mut warnings = Vec::new();
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("CHORUS_") && !NOT_KEYS.contains(&k.as_str()))
            .collect();
        // Long forms first, aliases last, so the documented short name wins.
        vars.sort_by_key(|(k, _)| ALIASES.iter().any(|(a, _)| a == k));
        for (name, value) in vars {
            match key_for_env(&name) {
                Some(key) => config = config.with_override(&key, &value, &name)?,
                None => warnings.push(format!(
                    "environment variable {name} is not a Chorus config key; ignored"
                )),
            }
        }
        config.validate("environment")?;
        Ok(Loaded { config, warnings })
    }

    /// Sets one dotted key from a string, parsed as that key's type.
    fn with_override(&self, key: &str, value: &str, source: &str) -> Result<Config, ConfigError> {
        let err = |reason: String| ConfigError {
            source: source.to_string(),
            key: Some(key.to_string()),
            reason,
        };
        let mut tree = serde_json::to_value(self).map_err(|e| err(e.to_string()))?;
        let (section, field) = key
            .split_once('.')
            .ok_or_else(|| err("not a section.key name".into()))?;
        let slot = tree
            .get_mut(section)
            .and_then(|s| s.get_mut(field))
            .ok_or_else(|| err("no such key".into()))?;
        *slot = match slot {
            serde_json::Value::Bool(_) => match value {
                "true" | "1" => serde_json::Value::Bool(true),
                "false" | "0" => serde_json::Value::Bool(false),
                _ => return Err(err(format!("expected true or false, got {value:?}"))),
            },
            serde_json::Value::Number(_) => value
                .trim()
                .parse::<u64>()
                .map(serde_json::Value::from)
                .map_err(|_| err(format!("expected a non-negative integer, got {value:?}")))?,
            // A list of tables (`auth.policies`) comes as JSON text.
            serde_json::Value::Array(_) if value.trim_start().starts_with('[') => {
                serde_json::from_str(value)
                    .map_err(|e| err(format!("expected a JSON list: {e}")))?
            }
            serde_json::Value::Array(_) => serde_json::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| serde_json::Value::String(s.to_string()))
                    .collect(),
            ),
            _ => serde_json::Value::String(value.to_string()),
        };
        serde_json::from_value(tree).map_err(|e| err(e.to_string()))
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self, source: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: &str| {
            Err(ConfigError {
                source: source.to_string(),
                key: Some(key.to_string()),
                reason: reason.to_string(),
            })
        };
        if !matches!(self.store.backend.as_str(), "sqlite" | "scylla") {
            return bad("store.backend", "must be \"sqlite\" or \"scylla\"");
        }
        if self.store.backend == "scylla" && self.store.scylla_nodes.is_empty() {
            return bad("store.scylla_nodes", "needs at least one host:port");
        }
        if self.store.keyspace.is_empty()
            || self.store.keyspace.len() > 48
            || !self
                .store
                .keyspace
                .starts_with(|c: char| c.is_ascii_alphabetic())
            || !self
                .store
                .keyspace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return bad(
                "store.keyspace",
                "must be a letter then letters, digits or _ (at most 48)",
            );
        }
        if self.store.replication_factor == 0 {
            return bad("store.replication_factor", "must be at least 1");
        }
        if self.node.name.is_empty() {
            return bad("node.name", "must not be empty");
        }
        if self.node.worker_id > u32::from(crate::snowflake::MAX_WORKER) {
            return bad(
                "node.worker_id",
                &format!("must be between 0 and {}", crate::snowflake::MAX_WORKER),
            );
        }
        if self.node.drain_batch_size == 0 {
            return bad("node.drain_batch_size", "must be at least 1");
        }
        if self.node.shutdown_timeout_ms == 0 {
            return bad("node.shutdown_timeout_ms", "must be at least 1");
        }
        if let Err(reason) = crate::policy::Policies::compile(&self.auth.policies) {
            return bad("auth.policies", &reason);
        }
        if self.limits.heartbeat_timeout_ms < 1_000 {
            return bad("limits.heartbeat_timeout_ms", "must be at least 1000");
        }
        if self.limits.max_channels_per_socket == 0 {
            return bad("limits.max_channels_per_socket", "must be at least 1");
        }
        if self.limits.max_channels == 0 {
            return bad("limits.max_channels", "must be at least 1");
        }
        if self.limits.channel_creations_per_second == 0 {
            return bad("limits.channel_creations_per_second", "must be at least 1");
        }
        if self.limits.dedupe_bytes < 1024 {
            return bad("limits.dedupe_bytes", "must be at least 1024");
        }
        if self.limits.max_payload_bytes == 0
            || self.limits.max_payload_bytes > self.limits.max_frame_bytes
        {
            return bad(
                "limits.max_payload_bytes",
                "must be between 1 and limits.max_frame_bytes",
            );
        }
        if self.presence.shards == 0 {
            return bad("presence.shards", "must be at least 1");
        }
        // Like a channel's client data: at most half of a process' memory.
        if u64::from(self.presence.remote_bytes) * 2
            > u64::from(self.runtime.process_memory_mib) * 1024 * 1024
            || self.presence.remote_bytes < 64 * 1024
        {
            return bad(
                "presence.remote_bytes",
                "must be at least 65536 and at most half of runtime.process_memory_mib",
            );
        }
        if self.limits.client_messages_per_second == 0 {
            return bad("limits.client_messages_per_second", "must be at least 1");
        }
        if self.limits.client_burst < self.limits.client_messages_per_second.min(1) {
            return bad("limits.client_burst", "must be at least 1");
        }
        if self.limits.outlet_queue_frames < 16 {
            return bad("limits.outlet_queue_frames", "must be at least 16");
        }
        if self.limits.outlet_queue_bytes < self.limits.max_frame_bytes {
            return bad(
                "limits.outlet_queue_bytes",
                "must be at least limits.max_frame_bytes",
            );
        }
        if self.node.fanout_write_delay_ms > 1000 {
            return bad("node.fanout_write_delay_ms", "must be at most 1000");
        }
        if self.node.fanout_write_delay_max_ms > 1000 {
            return bad("node.fanout_write_delay_max_ms", "must be at most 1000");
        }
        if self.node.fanout_write_delay_sockets == 0 {
            return bad("node.fanout_write_delay_sockets", "must be at least 1");
        }
        if !(1..=65_535).contains(&self.limits.listen_backlog) {
            return bad("limits.listen_backlog", "must be between 1 and 65535");
        }
        if !(2..=512).contains(&self.limits.max_json_depth) {
            return bad("limits.max_json_depth", "must be between 2 and 512");
        }
        if self.limits.inlet_queue_messages == 0 {
            return bad("limits.inlet_queue_messages", "must be at least 1");
        }
        if self.limits.inlet_queue_bytes < 1024 {
            return bad("limits.inlet_queue_bytes", "must be at least 1024");
        }
        if self.limits.http_head_timeout_ms == 0 || self.limits.http_body_timeout_ms == 0 {
            return bad(
                "limits.http_head_timeout_ms",
                "and limits.http_body_timeout_ms must be at least 1",
            );
        }
        if self.limits.max_connections_per_ip == 0 || self.limits.max_pending_connections == 0 {
            return bad(
                "limits.max_connections_per_ip",
                "and limits.max_pending_connections must be at least 1",
            );
        }
        if self.limits.reaction_queue_frames == 0 {
            return bad("limits.reaction_queue_frames", "must be at least 1");
        }
        if self.presence.max_subscribed_keys == 0 {
            return bad("presence.max_subscribed_keys", "must be at least 1");
        }
        if self.presence.relevant_set_size == 0 {
            return bad("presence.relevant_set_size", "must be at least 1");
        }
        if self.rooms.peak_enter_per_s == 0 {
            return bad("rooms.peak_enter_per_s", "must be at least 1");
        }
        if self.rooms.peak_exit_per_s >= self.rooms.peak_enter_per_s {
            return bad(
                "rooms.peak_exit_per_s",
                "must be below rooms.peak_enter_per_s (hysteresis)",
            );
        }
        for (key, ms) in [
            ("rooms.peak_batch_ms", self.rooms.peak_batch_ms),
            (
                "rooms.peak_presence_merge_ms",
                self.rooms.peak_presence_merge_ms,
            ),
            (
                "rooms.peak_reaction_interval_ms",
                self.rooms.peak_reaction_interval_ms,
            ),
        ] {
            if !(1..=60_000).contains(&ms) {
                return bad(key, "must be between 1 and 60000");
            }
        }
        if let Some(name) = self
            .modules
            .enabled
            .iter()
            .find(|m| !crate::modules::valid_name(m))
        {
            return bad(
                "modules.enabled",
                &format!("{name:?} is not a module name (1 to 64 of a-z, 0-9, _, -)"),
            );
        }
        if self.modules.fuel_per_message < 100_000 {
            return bad("modules.fuel_per_message", "must be at least 100000");
        }
        if !(1..=4096).contains(&self.modules.memory_mib) {
            return bad("modules.memory_mib", "must be between 1 and 4096");
        }
        if self.modules.crash_limit == 0 {
            return bad("modules.crash_limit", "must be at least 1");
        }
        if !(1..=1024).contains(&self.modules.max_file_mib) {
            return bad("modules.max_file_mib", "must be between 1 and 1024");
        }
        if let Err((key, reason)) = crate::budget::check(self) {
            return bad(key, &reason);
        }
        if self.runtime.max_processes < 16 {
            return bad("runtime.max_processes", "must be at least 16");
        }
        if !(1..=4096).contains(&self.runtime.process_memory_mib) {
            return bad("runtime.process_memory_mib", "must be between 1 and 4096");
        }
        if !(64..=8192).contains(&self.runtime.process_stack_kib) {
            return bad("runtime.process_stack_kib", "must be between 64 and 8192");
        }
        if self.runtime.freed_slot_resident_kib > 1024 {
            return bad("runtime.freed_slot_resident_kib", "must be at most 1024");
        }
        if self.cluster.join_timeout_ms == 0 {
            return bad("cluster.join_timeout_ms", "must be at least 1");
        }
        if self.cluster.node_timeout_ms < 3_000 {
            return bad(
                "cluster.node_timeout_ms",
                "must be at least 3000 (nodes report every second)",
            );
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.cluster.batch_bytes) {
            return bad("cluster.batch_bytes", "must be between 1024 and 16777216");
        }
        if !(1..=1024).contains(&self.cluster.batches_in_flight) {
            return bad("cluster.batches_in_flight", "must be between 1 and 1024");
        }
        if !(64 * 1024..=1024 * 1024 * 1024).contains(&self.cluster.recv_buffer_bytes) {
            return bad(
                "cluster.recv_buffer_bytes",
                "must be between 65536 and 1073741824",
            );
        }
        if self.cluster.send_queue_bytes < u64::from(self.cluster.batch_bytes) {
            return bad(
                "cluster.send_queue_bytes",
                "must be at least cluster.batch_bytes",
            );
        }
        Ok(())
    }
}

/// Maps `CHORUS_PORT` / `CHORUS_LIMITS_MAX_PAYLOAD_BYTES` to a dotted key.
fn key_for_env(name: &str) -> Option<String> {
    if let Some((_, key)) = ALIASES.iter().find(|(alias, _)| *alias == name) {
        return Some((*key).to_string());
    }
    let rest = name.strip_prefix("CHORUS_")?.to_ascii_lowercase();
    let (section, field) = rest.split_once('_')?;
    let tree = serde_json::to_value(Config::default()).ok()?;
    tree.get(section)?.get(field)?;
    Some(format!("{section}.{field}"))
}

/// The dotted key whose `key = value` line holds byte `offset` of `text`
/// (where toml points at a badly typed value).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let key = line.split_once('=')?.0.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let section = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find_map(|l| l.strip_prefix('[').and_then(|l| l.strip_suffix(']')))
        .map(str::trim);
    Some(match section {
        Some(section) if !section.is_empty() => format!("{section}.{key}"),
        _ => key.to_string(),
    })
}

/// toml reports `unknown field `x`, expected ...`; find which section holds it
/// so the error can name the dotted key.
fn unknown_field_path(text: &str, reason: &str) -> Option<String> {
    let field = reason
        .strip_prefix("unknown field `")?
        .split('`')
        .next()?
        .to_string();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
        } else if line
            .split('=')
            .next()
            .is_some_and(|k| k.trim() == field.as_str())
            && line.contains('=')
        {
            return Some(if section.is_empty() {
                field
            } else {
                format!("{section}.{field}")
            });
        }
    }
    Some(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::default();
        assert_eq!(c.node.port, 4000);
        assert_eq!(c.node.data_dir, "./data");
        assert_eq!(c.store.backend, "sqlite");
        assert_eq!(c.limits.heartbeat_timeout_ms, 60_000);
        assert_eq!(c.limits.max_channels_per_socket, 100);
        assert_eq!(c.limits.max_payload_bytes, 262_144);
    }

    #[test]
    fn the_shipped_lunatic_toml_parses() {
        let text = include_str!("../../lunatic.toml");
        let c = Config::from_toml(text, "lunatic.toml").expect("shipped config parses");
        assert_eq!(c.node.port, 4000);
    }

    #[test]
    fn badly_typed_value_names_key_and_file() {
        let err =
            Config::from_toml("[node]\nname = \"n\"\nport = \"four\"\n", "my.toml").unwrap_err();
        assert_eq!(err.source, "my.toml");
        assert_eq!(err.key.as_deref(), Some("node.port"));
        assert!(err.to_string().contains("key `node.port`"), "{err}");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = Config::from_toml("[limits]\nmax_payload = 3\n", "my.toml").unwrap_err();
        assert_eq!(err.source, "my.toml");
        assert_eq!(err.key.as_deref(), Some("limits.max_payload"));
        assert!(err.to_string().contains("my.toml"), "{err}");
        assert!(err.to_string().contains("limits.max_payload"), "{err}");
    }

    #[test]
    fn wrong_type_is_refused_with_the_file_named() {
        let err = Config::from_toml("[node]\nport = \"x\"\n", "a.toml").unwrap_err();
        assert!(err.to_string().starts_with("a.toml"), "{err}");
    }

    #[test]
    fn invalid_value_names_key() {
        let err = Config::from_toml("[store]\nbackend = \"mongo\"\n", "a.toml").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("store.backend"));
        let err =
            Config::from_toml("[runtime]\nfreed_slot_resident_kib = 1025\n", "a.toml").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("runtime.freed_slot_resident_kib"));
    }

    #[test]
    fn env_overrides_file_and_alias_wins_over_long_form() {
        let loaded = Config::load(
            Some(("[node]\nport = 5000\n", "f.toml")),
            env(&[
                ("CHORUS_PORT", "6000"),
                ("CHORUS_NODE_PORT", "7000"),
                ("CHORUS_LIMITS_MAX_PAYLOAD_BYTES", "1000"),
                ("CHORUS_SCYLLA_NODES", "a:1, b:2"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(loaded.config.node.port, 6000);
        assert_eq!(loaded.config.limits.max_payload_bytes, 1000);
        assert_eq!(loaded.config.store.scylla_nodes, vec!["a:1", "b:2"]);
        assert!(loaded.warnings.is_empty());
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let err = Config::load(None, env(&[("CHORUS_PORT", "http")])).unwrap_err();
        assert_eq!(err.source, "CHORUS_PORT");
        assert_eq!(err.key.as_deref(), Some("node.port"));
        let err = Config::load(None, env(&[("CHORUS_PORT", "70000")])).unwrap_err();
        assert_eq!(err.source, "CHORUS_PORT");
    }

    #[test]
    fn policies_come_from_toml_or_json_in_the_environment() {
        let text = "[[auth.policies]]\nname = \"members\"\ntopic = \"room:{id}:*\"\n\
                    actions = [\"join\"]\nclaims = { rooms = \"{id}\" }\n";
        let c = Config::from_toml(text, "f.toml").unwrap();
        assert_eq!(c.auth.policies.len(), 1);
        assert_eq!(c.auth.policies[0].claims["rooms"], "{id}");
        let json = r#"[{"name":"m","topic":"room:{id}:*","actions":["join","track"],"claims":{"rooms":"{id}"}}]"#;
        let loaded = Config::load(None, env(&[("CHORUS_AUTH_POLICIES", json)])).unwrap();
        assert_eq!(
            loaded.config.auth.policies[0].actions,
            vec!["join", "track"]
        );
        let err =
            Config::load(None, env(&[("CHORUS_AUTH_POLICIES", "[{\"name\": 1}]")])).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("auth.policies"));
        let err = Config::from_toml(
            "[[auth.policies]]\nname = \"p\"\ntopic = \"a:{x}\"\nactions = [\"fly\"]\n",
            "f.toml",
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("auth.policies"));
        assert!(err.reason.contains("auth.policies[0].actions"), "{err}");
    }

    #[test]
    fn the_worker_id_is_checked() {
        let c = Config::load(None, env(&[("CHORUS_NODE_WORKER_ID", "1023")])).unwrap();
        assert_eq!(c.config.node.worker_id, 1023);
        let err = Config::load(None, env(&[("CHORUS_NODE_WORKER_ID", "1024")])).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("node.worker_id"));
    }

    #[test]
    fn the_drain_keys_are_read_and_checked() {
        let c = Config::load(
            None,
            env(&[
                ("CHORUS_NODE_SHUTDOWN_TIMEOUT_MS", "5000"),
                ("CHORUS_NODE_DRAIN_BATCH_SIZE", "7"),
                ("CHORUS_NODE_DRAIN_BATCH_INTERVAL_MS", "0"),
            ]),
        )
        .unwrap();
        assert_eq!(c.config.node.shutdown_timeout_ms, 5000);
        assert_eq!(c.config.node.drain_batch_size, 7);
        assert_eq!(c.config.node.drain_batch_interval_ms, 0);
        let err = Config::load(None, env(&[("CHORUS_NODE_DRAIN_BATCH_SIZE", "0")])).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("node.drain_batch_size"));
        let err = Config::load(None, env(&[("CHORUS_NODE_SHUTDOWN_TIMEOUT_MS", "0")])).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("node.shutdown_timeout_ms"));
    }

    #[test]
    fn unknown_chorus_variable_is_a_warning() {
        let loaded = Config::load(None, env(&[("CHORUS_PROT", "1")])).unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("CHORUS_PROT"));
    }
}
