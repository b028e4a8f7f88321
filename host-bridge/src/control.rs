//! `chorus control`: the cluster's control server. It speaks lunatic's
//! control HTTP API (what `lunatic_distributed::control::Client` calls), so
//! the nodes use lunatic's own distributed client, QUIC node server and
//! guest APIs; what differs from lunatic's stock control server
//! (`lunatic-control-axum`):
//!
//! * it signs node certificates with the operator's CA (`cluster.ca_cert`,
//!   `cluster.ca_key`) and only for a node that presents the cluster's join
//!   secret; lunatic's public test CA only with `cluster.insecure_local`;
//! * it refuses a second live node with the same `node.name`, gives each
//!   node a Snowflake worker id no live node holds, and drops nodes it has
//!   not heard from for `cluster.node_timeout_ms` (the table is
//!   `chorus_core::cluster::Registry`);
//! * it serves no modules: nodes run the guest built into their binary, so
//!   lunatic's remote spawn of a module is refused (processes are spawned
//!   locally and talk across nodes by message).

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chorus_core::cluster::{self, Join, Registry};
use chorus_core::config::Config;
use lunatic_control::api::{ControlUrls, NodeStart, NodeStarted, Registration};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::node::{load_config, ConfigArg};

/// Largest registration request (a CSR and two labels).
const MAX_BODY: usize = 64 * 1024;

#[derive(clap::Args, Debug)]
pub struct ControlArgs {
    #[command(flatten)]
    config: ConfigArg,
}

/// What a node sends to join: lunatic's registration plus our labels.
#[derive(Debug, Deserialize, Serialize)]
pub struct JoinRequest {
    pub node_name: uuid::Uuid,
    pub csr_pem: String,
    pub chorus: Join,
}

/// The answer: lunatic's registration plus the node's worker id.
#[derive(Debug, Deserialize, Serialize)]
pub struct JoinAnswer {
    #[serde(flatten)]
    pub registration: Registration,
    pub worker_id: u16,
}

/// The node list (`GET /nodes`): lunatic's `NodesList` shape, each entry
/// with our fields too (lunatic's client ignores them).
#[derive(Debug, Deserialize, Serialize)]
pub struct Members {
    pub nodes: Vec<cluster::Member>,
}

struct Control {
    ca: rcgen::Certificate,
    ca_pem: String,
    join_secret: String,
    insecure: bool,
    bind: SocketAddr,
    registry: Mutex<Registry>,
    /// The file the table is kept in (`<node.data_dir>/control-nodes.json`).
    state: PathBuf,
}

impl Control {
    /// Writes the table to its file (a new file renamed over the old one,
    /// readable by this user only: it holds the nodes' bearer tokens). A
    /// failure is logged: the server keeps serving from memory.
    fn save(&self, registry: &Registry) {
        let written = registry
            .snapshot()
            .map_err(anyhow::Error::msg)
            .and_then(|json| {
                let tmp = self.state.with_extension("json.tmp");
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                file.write_all(json.as_bytes())?;
                file.sync_all()?;
                std::fs::rename(&tmp, &self.state)?;
                Ok(())
            });
        if let Err(e) = written {
            tracing::warn!(
                file = %self.state.display(),
                "cannot save the table of nodes ({e:#}); a restart of this control server \
                 would forget them"
            );
        }
    }
}

/// The table of nodes a previous run of the control server saved in
/// `path`, or a new one.
fn load_registry(path: &Path, timeout_ms: u64) -> Result<Registry> {
    match std::fs::read_to_string(path) {
        Ok(json) => {
            let registry = Registry::restore(timeout_ms, &json, now_ms()).map_err(|e| {
                anyhow!(
                    "{} is not a table of nodes this control server can read ({e}); move it \
                     away to start with no nodes (running nodes must then restart to rejoin)",
                    path.display()
                )
            })?;
            tracing::info!(
                file = %path.display(),
                nodes = registry.members().len(),
                "table of nodes taken back from the previous run; nodes not heard from within \
                 cluster.node_timeout_ms are dropped"
            );
            Ok(registry)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registry::new(timeout_ms)),
        Err(e) => Err(anyhow!("reading {}: {e}", path.display())),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn refuse(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(json!({ "error": reason.into() }))).into_response()
}

pub async fn run(args: ControlArgs) -> Result<ExitCode> {
    let config = load_config(args.config.config.as_deref())?;
    serve(&config).await?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: &Config) -> Result<()> {
    let k = &config.cluster;
    cluster::check_control(config).map_err(|(key, reason)| anyhow!("{key} {reason}"))?;
    let (ca, ca_pem) = if k.insecure_local {
        tracing::warn!(
            "INSECURE CLUSTER (cluster.insecure_local): lunatic's public test CA signs node \
             certificates and any process that reaches {} may join; loopback only, never \
             in production",
            k.control_bind
        );
        (
            lunatic_distributed::control::cert::test_root_cert()?,
            lunatic_distributed::control::cert::TEST_ROOT_CERT.to_string(),
        )
    } else {
        let cert = lunatic_distributed::control::cert::root_cert(&k.ca_cert, &k.ca_key)
            .with_context(|| {
                format!(
                    "loading the cluster CA (cluster.ca_cert {:?}, cluster.ca_key {:?})",
                    k.ca_cert, k.ca_key
                )
            })?;
        let pem = std::fs::read_to_string(&k.ca_cert)
            .with_context(|| format!("reading cluster.ca_cert {:?}", k.ca_cert))?;
        (cert, pem)
    };
    let bind: SocketAddr = k.control_bind.parse()?;
    let listener = std::net::TcpListener::bind(bind)
        .with_context(|| format!("cluster.control_bind {bind}: cannot listen"))?;
    listener.set_nonblocking(true)?;
    std::fs::create_dir_all(&config.node.data_dir)
        .with_context(|| format!("node.data_dir {:?}: cannot create it", config.node.data_dir))?;
    let state = Path::new(&config.node.data_dir).join("control-nodes.json");
    let registry = load_registry(&state, k.node_timeout_ms)?;
    let control = Arc::new(Control {
        ca,
        ca_pem,
        join_secret: k.join_secret.clone(),
        insecure: k.insecure_local,
        bind: listener.local_addr()?,
        registry: Mutex::new(registry),
        state,
    });
    let expiry = control.clone();
    tokio::spawn(async move {
        loop {
            // Often enough that a killed node leaves within a quarter of a
            // second of `cluster.node_timeout_ms` (failover time).
            tokio::time::sleep(Duration::from_millis(250)).await;
            let gone = match expiry.registry.lock() {
                Ok(mut r) => {
                    let gone = r.expire(now_ms());
                    if !gone.is_empty() {
                        expiry.save(&r);
                    }
                    gone
                }
                Err(_) => return,
            };
            for (name, id) in gone {
                tracing::warn!(node = %name, node_id = ?id, "node not heard from within cluster.node_timeout_ms: dropped from the cluster");
            }
        }
    });
    let app = Router::new()
        .route("/", post(register))
        .route("/started", post(started))
        .route("/stopped", post(stopped))
        .route("/nodes", get(nodes))
        .route("/module", post(no_modules))
        .route("/module/:id", get(no_modules))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(control.clone());
    tracing::info!(addr = %control.bind, "control server listening; nodes join with cluster.control = \"{}\"", control.bind);
    axum::Server::from_tcp(listener)?
        .serve(app.into_make_service())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The node a call comes from (lunatic's bearer token and node-name
/// header); marks it as heard from.
fn node_of(control: &Control, headers: &HeaderMap) -> Result<u64, Box<Response>> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let uuid = headers
        .get("x-lunatic-node-name")
        .and_then(|v| v.to_str().ok());
    let (Some(token), Some(uuid)) = (token, uuid) else {
        return Err(Box::new(refuse(
            StatusCode::UNAUTHORIZED,
            "missing the node's bearer token or x-lunatic-node-name",
        )));
    };
    let found = control
        .registry
        .lock()
        .map_err(|_| {
            Box::new(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "registry unavailable",
            ))
        })?
        .authenticate(uuid, token, now_ms());
    found.ok_or_else(|| {
        Box::new(refuse(
            StatusCode::UNAUTHORIZED,
            "unknown node: this control server has no registration for it (restarted, or \
             the node was dropped after cluster.node_timeout_ms); restart the node to rejoin",
        ))
    })
}

async fn register(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !control.insecure {
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !cluster::constant_time_eq(presented, &control.join_secret) {
            tracing::warn!("registration refused: wrong or missing cluster.join_secret");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "wrong or missing join secret: the node's cluster.join_secret must be the \
                 control server's",
            );
        }
    }
    let request: JoinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("malformed registration (is this a chorus node of the same version?): {e}"),
            )
        }
    };
    let cert_pem = match rcgen::CertificateSigningRequest::from_pem(&request.csr_pem)
        .and_then(|csr| csr.serialize_pem_with_signer(&control.ca))
    {
        Ok(pem) => pem,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("cannot sign the certificate request: {e}"),
            )
        }
    };
    let mut token = [0u8; 32];
    if getrandom::getrandom(&mut token).is_err() {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no randomness for a token",
        );
    }
    let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
    let uuid = request.node_name.hyphenated().to_string();
    let name = request.chorus.name.clone();
    let region = request.chorus.region.clone();
    let outcome = match control.registry.lock() {
        Ok(mut r) => {
            let outcome = r.register(&uuid, &token, request.chorus, now_ms());
            if outcome.is_ok() {
                control.save(&r);
            }
            outcome
        }
        Err(_) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "registry unavailable"),
    };
    let worker_id = match outcome {
        Ok((_, worker_id)) => worker_id,
        Err(refusal) => {
            tracing::warn!(node = %name, "registration refused: {refusal}");
            let status = match refusal {
                cluster::Refusal::DuplicateName { .. } => StatusCode::CONFLICT,
                cluster::Refusal::NoWorkerId => StatusCode::SERVICE_UNAVAILABLE,
                cluster::Refusal::BadLabel { .. } => StatusCode::BAD_REQUEST,
            };
            return refuse(status, refusal.to_string());
        }
    };
    tracing::info!(node = %name, %region, worker_id, "node registered");
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| control.bind.to_string());
    let base = format!("http://{host}");
    Json(JoinAnswer {
        registration: Registration {
            node_name: request.node_name,
            cert_pem_chain: vec![cert_pem],
            authentication_token: token,
            root_cert: control.ca_pem.clone(),
            urls: ControlUrls {
                api_base: format!("{base}/"),
                nodes: format!("{base}/nodes"),
                node_started: format!("{base}/started"),
                node_stopped: format!("{base}/stopped"),
                get_module: format!("{base}/module/{{id}}"),
                add_module: format!("{base}/module"),
                get_nodes: format!("{base}/nodes"),
            },
        },
        worker_id,
    })
    .into_response()
}

async fn started(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Json(start): Json<NodeStart>,
) -> Response {
    let registration = match node_of(&control, &headers) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let id = match control.registry.lock() {
        Ok(mut r) => {
            let id = r.start(registration, &start.node_address.to_string());
            if id.is_some() {
                control.save(&r);
            }
            id
        }
        Err(_) => None,
    };
    match id {
        Some(node_id) => {
            tracing::info!(node_id, address = %start.node_address, attributes = ?start.attributes, "node joined");
            Json(NodeStarted {
                node_id: node_id as i64,
            })
            .into_response()
        }
        None => refuse(StatusCode::UNAUTHORIZED, "unknown registration"),
    }
}

async fn stopped(State(control): State<Arc<Control>>, headers: HeaderMap) -> Response {
    let registration = match node_of(&control, &headers) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    if let Ok(mut r) = control.registry.lock() {
        if let Some(name) = r.stop(registration) {
            control.save(&r);
            tracing::info!(node = %name, "node left (stopped)");
        }
    }
    Json(()).into_response()
}

async fn nodes(State(control): State<Arc<Control>>, headers: HeaderMap) -> Response {
    let registration = match node_of(&control, &headers) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    // Each node gets the addresses it must dial: a node of another region
    // at its `cluster.advertise` address.
    let members = match control.registry.lock() {
        Ok(r) => r.members_for(registration),
        Err(_) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "registry unavailable"),
    };
    Json(Members { nodes: members }).into_response()
}

async fn no_modules() -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        "this control server serves no modules: chorus nodes run the guest built into their \
         binary; spawn processes on their own node and message them across nodes",
    )
}

#[derive(clap::Args, Debug)]
pub struct CaArgs {
    /// Directory for `ca.pem` (give it to the control server and the nodes)
    /// and `ca-key.pem` (the control server only); existing files are kept
    #[arg(long, value_name = "DIR")]
    out: std::path::PathBuf,
}

/// `chorus cluster-ca --out DIR`: a new CA for a cluster's node certificates.
pub fn make_ca(args: CaArgs) -> Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut params = rcgen::CertificateParams::new(vec!["chorus-cluster-ca".to_string()]);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Chorus cluster CA");
    let cert = rcgen::Certificate::from_params(params)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let files = [
        ("ca.pem", cert.serialize_pem()?, 0o644),
        ("ca-key.pem", cert.serialize_private_key_pem(), 0o600),
    ];
    for (name, _, _) in &files {
        let path = args.out.join(name);
        if path.exists() {
            anyhow::bail!("{} exists; not overwriting a CA", path.display());
        }
    }
    for (name, text, mode) in files {
        let path = args.out.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(text.as_bytes())?;
    }
    println!(
        "wrote {0}/ca.pem and {0}/ca-key.pem: set cluster.ca_cert and cluster.ca_key on the \
         control server, cluster.ca_cert on the nodes, and one cluster.join_secret on all",
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
