//! Starting and stopping the systems under test, each from the bench
//! itself, in a temp dir, on loopback, logging off or to a file, and
//! configured for the load (limits named next to each setting).

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::proto::System;
use crate::scenario::Scenario;

/// Where the Chorus binaries are.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn chorus_bin(&self) -> PathBuf {
        self.root.join("target/release/chorus")
    }
    pub fn chorus_guest(&self) -> PathBuf {
        self.root
            .join("target/wasm32-wasip1/release/chorus-guest.wasm")
    }
}

pub struct Server {
    pub addr: SocketAddr,
    /// The process whose RSS is sampled (the one listening on the port).
    pub pid: u32,
    pub version: String,
    child: Child,
    dir: PathBuf,
    /// epmd started by RabbitMQ's VM when none was running before.
    stop_epmd: bool,
}

/// Ports of this bench: fixed, out of everyone's way.
const CHORUS_PORT: u16 = 47400;

/// Chorus' port: `CHORUS_BENCH_PORT` when set (two runs side by side on one
/// machine), else [`CHORUS_PORT`].
fn chorus_port() -> u16 {
    std::env::var("CHORUS_BENCH_PORT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CHORUS_PORT)
}
const NATS_PORT: u16 = 47410;
const NATS_WS_PORT: u16 = 47411;
const CENTRIFUGO_PORT: u16 = 47430;
const RABBIT_AMQP_PORT: u16 = 47420;
const RABBIT_MQTT_PORT: u16 = 47421;
const RABBIT_WS_PORT: u16 = 47422;
const RABBIT_DIST_PORT: u16 = 47423;

fn temp_dir(system: System) -> Result<PathBuf, String> {
    named_temp_dir(&system.to_string())
}

/// A fresh directory `chorus-bench-<name>-<our pid>` under the temp dir.
pub fn named_temp_dir(name: &str) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("chorus-bench-{}-{}", name, std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

fn output_of(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.trim().to_string()
        })
        .unwrap_or_default()
}

/// Runs `program` under `sh -c 'ulimit -n <hard>; exec …'` in its own process
/// group, so the server gets every file descriptor it may have and stopping
/// it reaches its children.
pub fn spawn(
    program: &Path,
    args: &[String],
    envs: &[(&str, String)],
    log: &Path,
) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    let log_file = fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let log_err = log_file.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n \"$(ulimit -Hn)\"; exec \"$0\" \"$@\"")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .process_group(0);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn()
        .map_err(|e| format!("start {}: {e}", program.display()))
}

pub fn tail(path: &Path, lines: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

impl Server {
    /// Starts `system` configured for `scenario`'s load.
    pub fn start(system: System, paths: &Paths, scenario: Scenario) -> Result<Server, String> {
        match system {
            System::Chorus => start_chorus(paths, &[]),
            System::Nats => start_nats(),
            System::Centrifugo => start_centrifugo(scenario),
            System::Rabbitmq => start_rabbitmq(),
        }
    }

    /// A Chorus node with `CHORUS_*` overrides (the room scenarios).
    pub fn start_chorus_with(paths: &Paths, env: &[(String, String)]) -> Result<Server, String> {
        start_chorus(paths, env)
    }

    /// A Chorus node named `name` on `port` (one of a cluster), its own
    /// data directory, with `CHORUS_*` overrides.
    pub fn start_chorus_node(
        paths: &Paths,
        name: &str,
        port: u16,
        env: &[(String, String)],
    ) -> Result<Server, String> {
        start_chorus_on(paths, System::Chorus.to_string() + "-" + name, port, env)
    }

    pub fn log_tail(&self) -> String {
        tail(&self.dir.join("server.log"), 5)
    }

    /// Whether the server process is still there.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stop(mut self) {
        let pgid = self.child.id() as i32;
        signal_group(pgid, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        signal_group(pgid, "-KILL");
        let _ = self.child.wait();
        if self.stop_epmd {
            if let Some(pid) = pid_listening_on(4369) {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Sends `signal` to the process group `pgid` (the server and its children).
fn signal_group(pgid: i32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// Polls `probe` every 200 ms until it gives a value, failing when `child`
/// exits first or after `within` (`not_yet` says what did not happen).
fn wait_for<T>(
    child: &mut Child,
    within: Duration,
    log: &Path,
    not_yet: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited at start ({status}): {}", tail(log, 5)));
        }
        if let Some(found) = probe() {
            return Ok(found);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{not_yet} after {}s: {}",
                within.as_secs(),
                tail(log, 5)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `port` accepts TCP connections, the child is still alive,
/// and a process listening on it is found.
fn wait_ready(child: &mut Child, port: u16, within: Duration, log: &Path) -> Result<u32, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(
        child,
        within,
        log,
        &format!("not listening on {port}"),
        || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .and_then(|_| pid_listening_on(port))
        },
    )
}

/// Waits until the Chorus node on `port` answers `/healthz` with its JSON
/// status (its guest compiled and its supervision tree up).
fn wait_serving(child: &mut Child, port: u16, within: Duration, log: &Path) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let not_yet = format!("listening on {port} but /healthz did not answer");
    wait_for(child, within, log, &not_yet, || {
        crate::cluster::http_get(addr, "/healthz")
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .filter(|v| v.get("status").is_some())
            .map(|_| ())
    })
}

fn start_chorus(paths: &Paths, extra_env: &[(String, String)]) -> Result<Server, String> {
    start_chorus_on(paths, System::Chorus.to_string(), chorus_port(), extra_env)
}

fn start_chorus_on(
    paths: &Paths,
    dir_name: String,
    port: u16,
    extra_env: &[(String, String)],
) -> Result<Server, String> {
    let bin = paths.chorus_bin();
    let guest = paths.chorus_guest();
    for p in [&bin, &guest] {
        if !p.exists() {
            return Err(format!("{} is missing (build it first)", p.display()));
        }
    }
    let dir = named_temp_dir(&dir_name)?;
    let log = dir.join("server.log");
    let args = vec![
        "run".to_string(),
        "--config".to_string(),
        paths.root.join("lunatic.toml").display().to_string(),
        "--guest".to_string(),
        guest.display().to_string(),
    ];
    let mut envs = vec![
        ("CHORUS_PORT", port.to_string()),
        ("CHORUS_HOST", "127.0.0.1".to_string()),
        ("CHORUS_DATA_DIR", dir.join("data").display().to_string()),
    ];
    envs.extend(extra_env.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let mut child = spawn(&bin, &args, &envs, &log)?;
    // Listening is not serving: the node binds its port before its guest is
    // compiled (a first start with a new guest compiles it for seconds), so
    // a run starts once `/healthz`, answered by a guest process, answers.
    let ready = wait_ready(&mut child, port, Duration::from_secs(60), &log).and_then(|pid| {
        wait_serving(&mut child, port, Duration::from_secs(180), &log)?;
        Ok(pid)
    });
    let pid = match ready {
        Ok(pid) => pid,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("chorus {e}"));
        }
    };
    let version = output_of(&bin.display().to_string(), &["--version"]);
    Ok(Server {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        pid,
        version,
        child,
        dir,
        stop_epmd: false,
    })
}

fn find_program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(extra.iter().map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.exists())
}

fn start_nats() -> Result<Server, String> {
    let bin = find_program("nats-server", &["/usr/sbin", "/usr/bin"])
        .ok_or("nats-server is not installed (apt-get install nats-server)")?;
    let dir = temp_dir(System::Nats)?;
    let log = dir.join("server.log");
    let conf = dir.join("nats.conf");
    // Logging off (debug/trace false, the log to a file we delete); slow
    // consumers get 64 MB of pending data and 10 s before being cut, so
    // the load generator's own stalls do not end subscriptions.
    write(
        &conf,
        &format!(
            "listen: \"127.0.0.1:{NATS_PORT}\"\n\
             debug: false\ntrace: false\nlogtime: false\n\
             max_pending: 67108864\nwrite_deadline: \"10s\"\n\
             max_connections: 1000000\n\
             websocket {{\n  listen: \"127.0.0.1:{NATS_WS_PORT}\"\n  no_tls: true\n  compression: false\n}}\n"
        ),
    )?;
    let args = vec!["-c".to_string(), conf.display().to_string()];
    let mut child = spawn(&bin, &args, &[], &log)?;
    let pid = match wait_ready(&mut child, NATS_WS_PORT, Duration::from_secs(20), &log) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("nats-server {e}"));
        }
    };
    let version = output_of(&bin.display().to_string(), &["--version"]);
    Ok(Server {
        addr: SocketAddr::from(([127, 0, 0, 1], NATS_WS_PORT)),
        pid,
        version,
        child,
        dir,
        stop_epmd: false,
    })
}

/// Where the Centrifugo binary is: `$CHORUS_BENCH_CENTRIFUGO`, then PATH,
/// then Go's install directories (`scripts/bench.sh` builds it with
/// `go install` into `$(go env GOPATH)/bin`).
pub fn centrifugo_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHORUS_BENCH_CENTRIFUGO") {
        let p = PathBuf::from(p);
        return p.exists().then_some(p);
    }
    let mut extra: Vec<String> = Vec::new();
    for var in ["GOBIN", "GOPATH"] {
        if let Some(v) = std::env::var_os(var) {
            let v = PathBuf::from(v);
            let dir = if var == "GOPATH" { v.join("bin") } else { v };
            extra.push(dir.display().to_string());
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        extra.push(PathBuf::from(home).join("go/bin").display().to_string());
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    find_program("centrifugo", &extra)
}

/// Centrifugo's configuration for `scenario` (JSON, v6 keys). Chosen for
/// its best at each load, as documented in BENCHMARKS.md:
/// * anonymous clients, no token (Chorus and NATS check none either):
///   `client.allow_anonymous_connect_without_token`, and on channels
///   without a namespace `allow_subscribe_for_anonymous` (with
///   `allow_subscribe_for_client`) and `allow_publish_for_subscriber` (with
///   `allow_publish_for_anonymous`); presence, join/leave and history off;
/// * a 64 MB outgoing queue per client and a 10 s write timeout, as NATS'
///   `max_pending` and `write_deadline`, so the loader's own stalls do not
///   cut subscribers;
/// * logging at `error`, usage statistics off;
/// * for loads of many mostly idle connections (connect-storm, idle) the
///   WebSocket write-buffer pool, which Centrifugo recommends there to
///   save memory per connection; off where every connection writes all
///   the time (fan-out, many-rooms).
pub fn centrifugo_config(port: u16, scenario: Scenario) -> String {
    let idle = matches!(scenario, Scenario::ConnectStorm | Scenario::Idle);
    serde_json::json!({
        "http_server": {"address": "127.0.0.1", "port": port},
        "log": {"level": "error"},
        "usage_stats": {"disabled": true},
        "client": {
            "allow_anonymous_connect_without_token": true,
            "allowed_origins": ["*"],
            "queue_max_size": 67_108_864,
        },
        "channel": {
            "without_namespace": {
                "allow_subscribe_for_client": true,
                "allow_subscribe_for_anonymous": true,
                "allow_publish_for_subscriber": true,
                "allow_publish_for_anonymous": true,
                "presence": false,
                "join_leave": false,
                "history_size": 0
            }
        },
        "websocket": {
            "write_timeout": "10s",
            "use_write_buffer_pool": idle
        }
    })
    .to_string()
}

/// Centrifugo's version: a binary built by `go install` says v0.0.0 of
/// itself, so the module version comes from its Go build info
/// (`go version -m`), the binary's own word only without Go.
fn centrifugo_version(bin: &Path) -> String {
    let info = output_of("go", &["version", "-m", &bin.display().to_string()]);
    let module = info.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            ["mod", path, version, ..] if path.starts_with("github.com/centrifugal/centrifugo") => {
                Some(version.to_string())
            }
            _ => None,
        }
    });
    match module {
        Some(v) => format!("Centrifugo {v} (go install)"),
        None => output_of(&bin.display().to_string(), &["version"]),
    }
}

fn start_centrifugo(scenario: Scenario) -> Result<Server, String> {
    let bin = centrifugo_bin().ok_or(
        "centrifugo is not installed (scripts/bench.sh builds it: go install github.com/centrifugal/centrifugo/v6@v6.9.1)",
    )?;
    let dir = temp_dir(System::Centrifugo)?;
    let log = dir.join("server.log");
    let conf = dir.join("config.json");
    write(&conf, &centrifugo_config(CENTRIFUGO_PORT, scenario))?;
    let args = vec!["--config".to_string(), conf.display().to_string()];
    let mut child = spawn(&bin, &args, &[], &log)?;
    let pid = match wait_ready(&mut child, CENTRIFUGO_PORT, Duration::from_secs(30), &log) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("centrifugo {e}"));
        }
    };
    let version = centrifugo_version(&bin);
    Ok(Server {
        addr: SocketAddr::from(([127, 0, 0, 1], CENTRIFUGO_PORT)),
        pid,
        version,
        child,
        dir,
        stop_epmd: false,
    })
}

fn start_rabbitmq() -> Result<Server, String> {
    let bin = find_program("rabbitmq-server", &["/usr/lib/rabbitmq/bin"])
        .map(|p| {
            // /usr/sbin's wrapper switches to the rabbitmq user; the real
            // script runs as whoever starts it, with our temp dirs.
            let direct = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
            if direct.exists() {
                direct
            } else {
                p
            }
        })
        .ok_or("rabbitmq-server is not installed (apt-get install rabbitmq-server)")?;
    let epmd_was_running = pid_listening_on(4369).is_some();
    let dir = temp_dir(System::Rabbitmq)?;
    let log = dir.join("server.log");
    let conf = dir.join("rabbitmq.conf");
    // What makes it hold thousands of WebSocket subscribers:
    // * web_mqtt.max_connections: Ranch's default of 1,024 connections
    //   leaves every later client accepted by the kernel but never served.
    // * memory and disk alarms block all publishers; the thresholds are set
    //   for a benchmark box (absolute memory, tiny disk floor).
    // * backlog and acceptors for the connect storm.
    write(
        &conf,
        &format!(
            "listeners.tcp.default = 127.0.0.1:{RABBIT_AMQP_PORT}\n\
             mqtt.listeners.tcp.default = 127.0.0.1:{RABBIT_MQTT_PORT}\n\
             mqtt.allow_anonymous = true\n\
             mqtt.tcp_listen_options.backlog = 4096\n\
             mqtt.tcp_listen_options.nodelay = true\n\
             web_mqtt.tcp.ip = 127.0.0.1\n\
             web_mqtt.tcp.port = {RABBIT_WS_PORT}\n\
             web_mqtt.tcp.backlog = 4096\n\
             web_mqtt.num_acceptors.tcp = 16\n\
             web_mqtt.max_connections = infinity\n\
             web_mqtt.ws_opts.idle_timeout = 120000\n\
             web_mqtt.cowboy_opts.idle_timeout = 120000\n\
             loopback_users = none\n\
             vm_memory_high_watermark.absolute = 8GB\n\
             disk_free_limit.absolute = 10MB\n\
             log.console = false\n\
             log.file.level = warning\n"
        ),
    )?;
    write(&dir.join("enabled_plugins"), "[rabbitmq_web_mqtt].\n")?;
    let home = dir.join("home");
    fs::create_dir_all(&home).map_err(|e| e.to_string())?;
    let d = |p: &str| dir.join(p).display().to_string();
    let envs = [
        ("HOME", home.display().to_string()),
        ("RABBITMQ_NODENAME", "chorusbench@localhost".to_string()),
        ("RABBITMQ_CONFIG_FILE", conf.display().to_string()),
        ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
        ("RABBITMQ_MNESIA_BASE", d("mnesia")),
        ("RABBITMQ_LOG_BASE", d("log")),
        ("RABBITMQ_PID_FILE", d("rabbit.pid")),
        ("RABBITMQ_DIST_PORT", RABBIT_DIST_PORT.to_string()),
        ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".to_string()),
        // Erlang process and port limits well above one process and one
        // port per connection (the VM's port limit is also capped by the
        // file-descriptor limit, 20,000 here).
        ("RABBITMQ_MAX_NUMBER_OF_PROCESSES", "4194304".to_string()),
        (
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
            "+Q 1048576".to_string(),
        ),
        ("ERL_EPMD_ADDRESS", "127.0.0.1".to_string()),
    ];
    let mut child = spawn(&bin, &[], &envs, &log)?;
    let pid = match wait_ready(&mut child, RABBIT_WS_PORT, Duration::from_secs(90), &log) {
        Ok(pid) => pid,
        Err(e) => {
            let pgid = child.id() as i32;
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .status();
            let _ = child.wait();
            return Err(format!("rabbitmq-server {e}"));
        }
    };
    let version = fs::read_dir("/usr/lib/rabbitmq/lib")
        .ok()
        .and_then(|mut it| it.next())
        .and_then(|e| e.ok())
        .map(|e| {
            e.file_name()
                .to_string_lossy()
                .replace("rabbitmq_server-", "RabbitMQ ")
        })
        .unwrap_or_else(|| "RabbitMQ".into());
    Ok(Server {
        addr: SocketAddr::from(([127, 0, 0, 1], RABBIT_WS_PORT)),
        pid,
        version: format!("{version} (rabbitmq_web_mqtt)"),
        child,
        dir,
        stop_epmd: !epmd_was_running,
    })
}

/// The pid of the process holding a listening TCP socket on `port`
/// (from /proc/net/tcp{,6} and /proc/*/fd).
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for proc_entry in fs::read_dir("/proc").ok()?.flatten() {
        let name = proc_entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Proportional set size of `pid` in KiB (`Pss` of `smaps_rollup`), `None`
/// once it is gone. Slower than [`rss_kib`] (the kernel walks every
/// mapping): read at the few points a run reports, not sampled.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU time `pid` has used (user + system, every thread), in seconds,
/// `None` once it is gone: `utime` and `stime` of `/proc/<pid>/stat`, in
/// clock ticks of `_SC_CLK_TCK`.
pub fn cpu_s(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after it.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the running system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Resident set size of `pid` in KiB (VmRSS), `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_of_a_process_grows_with_its_work() {
        let me = std::process::id();
        let before = cpu_s(me).expect("this process's /proc/<pid>/stat");
        // Work until the kernel has counted 50 ms of CPU more (a clock tick
        // is 10 ms), however busy the machine; a reader that never sees the
        // time grow fails after 60 s.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after - before < 0.05 && started.elapsed() < Duration::from_secs(60) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            after = cpu_s(me).expect("still running");
        }
        assert!(after - before >= 0.05, "{before} -> {after}");
        assert!(cpu_s(u32::MAX).is_none(), "no such process");
    }
}
