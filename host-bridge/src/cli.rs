//! The operator subcommands that do not start a node: `check-config`,
//! `gentoken`, `drain` and `version`.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::metrics::{LUNATIC_VERSION, VERSION, WASMTIME_VERSION};
use crate::node::{self, ConfigArg, EMBEDDED_GUEST};

#[derive(clap::Args, Debug)]
pub struct CheckConfigArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Also print the resolved configuration (file + CHORUS_* variables) as TOML
    #[arg(long)]
    print: bool,
    /// Check it as the config of `chorus control` (the cluster's control
    /// server) instead of a node's
    #[arg(long)]
    control: bool,
}

#[derive(clap::Args, Debug)]
pub struct GentokenArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The user id (`sub` claim): who the token's holder is to the node
    #[arg(long, value_name = "USER")]
    sub: String,
    /// `role` claim; `service_role` may use the admin API and the dashboard
    #[arg(long, value_name = "ROLE", default_value = "authenticated")]
    role: String,
    /// Lifetime: seconds, or a number with s, m, h or d (`90s`, `30m`, `12h`, `7d`)
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    exp: String,
}

#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The node's address, `host:port` (default: node.host and node.port of the config)
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
}

/// `chorus drain`: asks the node of the config (or `--addr`) to drain, as
/// SIGTERM does, through `POST /realtime/v1/api/drain`; with auth on, with a
/// short-lived `service_role` token signed with the config's secret.
pub fn drain(args: DrainArgs) -> Result<ExitCode> {
    use std::io::{Read, Write};
    let config = node::load_config_quiet(args.config.config.as_deref())?.config;
    let addr = args
        .addr
        .unwrap_or_else(|| format!("{}:{}", config.node.host, config.node.port));
    let mut auth = String::new();
    if !config.auth.jwt_secret.is_empty() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims =
            json!({"sub": "chorus-drain", "role": "service_role", "iat": now, "exp": now + 60});
        let token = chorus_core::jwt::sign_hs256(&claims, config.auth.jwt_secret.as_bytes());
        auth = format!("Authorization: Bearer {token}\r\n");
    }
    let timeout = std::time::Duration::from_secs(10);
    let target = std::net::ToSocketAddrs::to_socket_addrs(&addr)
        .with_context(|| format!("--addr {addr:?} is not host:port"))?
        .next()
        .with_context(|| format!("{addr:?} resolves to no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&target, timeout)
        .with_context(|| format!("cannot reach the node at {addr} (is it running?)"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "POST /realtime/v1/api/drain HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .with_context(|| format!("no answer from {addr}"))?;
    let status = answer.split(' ').nth(1).unwrap_or("");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    if status != "202" {
        bail!("the node at {addr} refused the drain ({status}): {body}");
    }
    println!("{body}");
    Ok(ExitCode::SUCCESS)
}

/// `chorus check-config`: loads the config like `chorus run` would and says
/// whether the node would start with it.
pub fn check_config(args: CheckConfigArgs) -> Result<ExitCode> {
    let source = match &args.config.config {
        Some(p) => p.display().to_string(),
        None if std::path::Path::new("lunatic.toml").is_file() => "./lunatic.toml".into(),
        None => "built-in defaults (no ./lunatic.toml)".into(),
    };
    let loaded = node::load_config_quiet(args.config.config.as_deref())?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let c = &loaded.config;
    if args.print {
        let mut shown = c.clone();
        if !shown.auth.jwt_secret.is_empty() {
            shown.auth.jwt_secret = "(set, not shown)".into();
        }
        print!(
            "{}",
            toml::to_string(&shown).context("printing the configuration")?
        );
    }
    let auth = if c.auth.jwt_secret.is_empty() {
        "OPEN (no auth.jwt_secret: any client may connect and join any topic)"
    } else {
        "JWT HS256"
    };
    let k = &c.cluster;
    if args.control {
        // The same checks `chorus control` makes before it listens.
        chorus_core::cluster::check_control(c)
            .map_err(|(key, reason)| anyhow::anyhow!("{source}: {key} {reason}"))?;
        let trust = if k.insecure_local {
            "INSECURE LOCAL (lunatic's public test CA, no join secret; loopback only)"
        } else {
            "own CA, join secret"
        };
        println!(
            "config ok ({source}): control server on {}, {trust}",
            k.control_bind
        );
        return Ok(ExitCode::SUCCESS);
    }
    let cluster = if k.control.is_empty() {
        "single node (no cluster.control)".to_string()
    } else {
        // The same checks a node makes before it joins its control server.
        chorus_core::cluster::check_node(c)
            .map_err(|(key, reason)| anyhow::anyhow!("{source}: {key} {reason}"))?;
        format!(
            "joins the cluster of {} from {} in region {:?}",
            k.control, k.bind, k.region
        )
    };
    println!(
        "config ok ({source}): node {} on {}:{}, store {}, auth {auth}, {cluster}",
        c.node.name, c.node.host, c.node.port, c.store.backend
    );
    Ok(ExitCode::SUCCESS)
}

/// `chorus gentoken`: a token signed with the node's `auth.jwt_secret`.
pub fn gentoken(args: GentokenArgs) -> Result<ExitCode> {
    let config = node::load_config_quiet(args.config.config.as_deref())?.config;
    if config.auth.jwt_secret.is_empty() {
        bail!(
            "the node has no auth.jwt_secret (set it in the config or CHORUS_JWT_SECRET): \
             an open node needs no token, and a token signed with nothing would be worthless"
        );
    }
    if args.sub.is_empty() {
        bail!("--sub must not be empty");
    }
    let lifetime = parse_duration(&args.exp)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = json!({
        "sub": args.sub,
        "role": args.role,
        "iat": now,
        "exp": now.saturating_add(lifetime),
    });
    println!(
        "{}",
        chorus_core::jwt::sign_hs256(&claims, config.auth.jwt_secret.as_bytes())
    );
    Ok(ExitCode::SUCCESS)
}

/// `chorus version`: this binary's version and what it embeds.
pub fn version() -> ExitCode {
    use sha2::{Digest, Sha256};
    println!("chorus {VERSION}");
    println!("lunatic {LUNATIC_VERSION} (runtime crates)");
    println!("wasmtime {WASMTIME_VERSION}");
    if EMBEDDED_GUEST.is_empty() {
        println!("guest: none embedded (built before the guest; use --guest)");
    } else {
        let digest = Sha256::digest(EMBEDDED_GUEST);
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        println!(
            "guest: embedded, {} bytes, sha256 {hex}…",
            EMBEDDED_GUEST.len()
        );
    }
    ExitCode::SUCCESS
}

/// Seconds in `90`, `90s`, `30m`, `12h` or `7d`.
fn parse_duration(text: &str) -> Result<u64> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("--exp {text:?}: expected a number with s, m, h or d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        other => bail!("--exp {text:?}: unknown unit {other:?} (use s, m, h or d)"),
    };
    if n == 0 {
        bail!("--exp must be more than zero");
    }
    n.checked_mul(scale)
        .with_context(|| format!("--exp {text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("90").ok(), Some(90));
        assert_eq!(parse_duration("90s").ok(), Some(90));
        assert_eq!(parse_duration("30m").ok(), Some(1_800));
        assert_eq!(parse_duration("12h").ok(), Some(43_200));
        assert_eq!(parse_duration("7d").ok(), Some(604_800));
        for bad in ["", "h", "0", "5w", "-3s", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
