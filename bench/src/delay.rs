//! Latency links between simulated regions (issue 14 item 9): this
//! machine's kernel has no `netem` qdisc, and the nodes talk QUIC over UDP,
//! which Toxiproxy (TCP only) cannot carry. So the bench runs its own
//! delaying proxies on loopback:
//!
//! * [`udp`]: what a node of another region dials instead of a node's QUIC
//!   address (`cluster.advertise`). Each client address gets its own
//!   upstream socket (so the node sees one peer per client, as QUIC
//!   needs); datagrams in both directions leave `delay` after they arrived,
//!   in arrival order; at most [`QUEUE`] wait per direction of a client,
//!   beyond that they are dropped (counted), as a router's queue would.
//! * [`tcp`]: a client of one region connecting to a gateway of another
//!   (the "home region" comparison): bytes in both directions leave
//!   `delay` after they were read; a full queue stops reading (TCP's own
//!   back-pressure), nothing is dropped.
//!
//! The delay is ONE-WAY: a round trip through a proxy takes `2 × delay`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Datagrams (or TCP chunks) waiting per direction of one client.
pub const QUEUE: usize = 16_384;

/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65_535;

/// The proxies of a run, on their own runtime; dropping it stops them.
pub struct Links {
    rt: tokio::runtime::Runtime,
    /// Datagrams dropped because a queue was full.
    pub dropped: Arc<AtomicU64>,
}

impl Links {
    pub fn new() -> Result<Links, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("delay-proxy")
            .enable_all()
            .build()
            .map_err(|e| format!("delay proxy runtime: {e}"))?;
        Ok(Links {
            rt,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A UDP proxy on `listen` to `upstream`, `delay` each way.
    pub fn udp(
        &self,
        listen: SocketAddr,
        upstream: SocketAddr,
        delay: Duration,
    ) -> Result<(), String> {
        let socket = self
            .rt
            .block_on(UdpSocket::bind(listen))
            .map_err(|e| format!("udp proxy {listen}: {e}"))?;
        let dropped = self.dropped.clone();
        self.rt
            .spawn(udp_proxy(Arc::new(socket), upstream, delay, dropped));
        Ok(())
    }

    /// A TCP proxy on `listen` to `upstream`, `delay` each way.
    pub fn tcp(
        &self,
        listen: SocketAddr,
        upstream: SocketAddr,
        delay: Duration,
    ) -> Result<(), String> {
        let listener = self
            .rt
            .block_on(TcpListener::bind(listen))
            .map_err(|e| format!("tcp proxy {listen}: {e}"))?;
        self.rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(tcp_pipe(cr, sw, delay));
                    tcp_pipe(sr, cw, delay).await;
                });
            }
        });
        Ok(())
    }
}

async fn udp_proxy(
    listener: Arc<UdpSocket>,
    upstream: SocketAddr,
    delay: Duration,
    dropped: Arc<AtomicU64>,
) {
    // Per client: the queue of its datagrams toward the upstream.
    let mut clients: HashMap<SocketAddr, mpsc::Sender<(Instant, Vec<u8>)>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((n, from)) = listener.recv_from(&mut buf).await else {
            continue;
        };
        let due = Instant::now() + delay;
        let known = clients.get(&from).filter(|tx| !tx.is_closed()).cloned();
        let tx = match known {
            Some(tx) => tx,
            None => {
                let Ok(up) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if up.connect(upstream).await.is_err() {
                    continue;
                }
                let up = Arc::new(up);
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(udp_send_up(up.clone(), rx));
                tokio::spawn(udp_back(up, listener.clone(), from, delay, dropped.clone()));
                clients.insert(from, tx.clone());
                tx
            }
        };
        if tx.try_send((due, buf[..n].to_vec())).is_err() {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends a client's datagrams upstream when they are due.
async fn udp_send_up(up: Arc<UdpSocket>, mut rx: mpsc::Receiver<(Instant, Vec<u8>)>) {
    while let Some((due, data)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        let _ = up.send(&data).await;
    }
}

/// Reads the upstream's answers to one client and sends them back from
/// the proxy's address when due.
async fn udp_back(
    up: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    delay: Duration,
    dropped: Arc<AtomicU64>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    tokio::spawn(async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            let _ = listener.send_to(&data, client).await;
        }
    });
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        // An error is the ICMP answer to an earlier datagram (the node's
        // server was not bound yet): the socket stays usable.
        let Ok(n) = up.recv(&mut buf).await else {
            continue;
        };
        if tx
            .try_send((Instant::now() + delay, buf[..n].to_vec()))
            .is_err()
        {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read.
async fn tcp_pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_and_tcp_links_delay_each_way() {
        let links = Links::new().unwrap();
        let delay = Duration::from_millis(30);
        // An echo server behind each proxy.
        let echo_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let echo_addr = echo_udp.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 64];
            while let Ok((n, from)) = echo_udp.recv_from(&mut b) {
                let _ = echo_udp.send_to(&b[..n], from);
            }
        });
        let free = |udp: bool| {
            if udp {
                std::net::UdpSocket::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
            } else {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
            }
        };
        let proxy = free(true);
        links.udp(proxy, echo_addr, delay).unwrap();
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let t = std::time::Instant::now();
        c.send_to(b"ping", proxy).unwrap();
        let mut b = [0u8; 64];
        let (n, from) = c.recv_from(&mut b).unwrap();
        assert_eq!((&b[..n], from), (&b"ping"[..], proxy));
        assert!(t.elapsed() >= 2 * delay, "{:?}", t.elapsed());

        let echo_tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let echo_addr = echo_tcp.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = echo_tcp.accept() {
                let mut b = [0u8; 64];
                use std::io::{Read, Write};
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            }
        });
        let proxy = free(false);
        links.tcp(proxy, echo_addr, delay).unwrap();
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(proxy).unwrap();
        let t = std::time::Instant::now();
        s.write_all(b"hello").unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert!(t.elapsed() >= 2 * delay, "{:?}", t.elapsed());
        assert_eq!(links.dropped.load(Ordering::Relaxed), 0);
    }
}
