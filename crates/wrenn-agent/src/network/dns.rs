//! The DNS forwarder capsules resolve through (as Docker's embedded DNS does): for each
//! capsule a UDP socket and a TCP listener on its gateway address, port 53, relaying
//! queries to the host's resolvers from `/etc/resolv.conf` (re-read when it changes).
//!
//! The host's resolvers may sit at private addresses that capsules must not reach
//! directly (here: 10.255.255.53); the agent reaches them from the host instead. The
//! relay is bounded: at most [`DnsOptions::max_inflight`] queries at once host-wide and
//! [`DnsOptions::max_inflight_per_capsule`] per capsule (more are dropped, and the
//! client retries), every upstream exchange has a timeout, and TCP connections are
//! capped per capsule and closed when idle.
//!
//! Listener sockets are bound with `IP_FREEBIND` before the gateway address exists, so
//! they can be set up while the veth is; a bind that fails with `EADDRINUSE` means the
//! slot is taken.

use crate::runtime::error_chain;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustix::net::{AddressFamily, SocketType, ipproto, sockopt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The DNS port.
pub const DNS_PORT: u16 = 53;
/// Largest DNS message (TCP length prefix, UDP datagram).
const MAX_MESSAGE: usize = 65535;
/// How often `/etc/resolv.conf` is checked for changes, at most.
const RESOLV_CONF_RECHECK: Duration = Duration::from_secs(1);
/// Resolvers tried per query (`MAXNS` in glibc).
const MAX_UPSTREAMS: usize = 3;

/// Settings of the forwarder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsOptions {
    /// The host's resolver configuration (default `/etc/resolv.conf`).
    pub resolv_conf: PathBuf,
    /// How long one upstream may take to answer before the next is tried (default 2 s).
    pub upstream_timeout: Duration,
    /// Queries relayed at once, all capsules together (default 1024).
    pub max_inflight: usize,
    /// Queries relayed at once for one capsule (default 64).
    pub max_inflight_per_capsule: usize,
    /// TCP connections open at once per capsule (default 16).
    pub max_tcp_per_capsule: usize,
    /// An idle TCP client connection is closed after this long (default 10 s).
    pub tcp_idle_timeout: Duration,
}

impl Default for DnsOptions {
    fn default() -> Self {
        Self {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            upstream_timeout: Duration::from_secs(2),
            max_inflight: 1024,
            max_inflight_per_capsule: 64,
            max_tcp_per_capsule: 16,
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }
}

/// The host's resolvers, re-read when `resolv.conf` changes.
#[derive(Debug)]
struct Upstreams {
    checked: Instant,
    stamp: Option<(SystemTime, u64)>,
    servers: Vec<SocketAddr>,
}

/// The forwarder shared by every capsule of a [`Network`](super::Network).
#[derive(Debug)]
pub(crate) struct Forwarder {
    options: DnsOptions,
    /// Never forward to these (the capsule range: the gateways are ours).
    exclude: wrenn_core::config::Cidr,
    upstreams: Mutex<Upstreams>,
    inflight: Arc<Semaphore>,
}

/// The listeners of one capsule; dropping this stops them, [`stop`](Self::stop) also
/// waits until their sockets are closed.
#[derive(Debug)]
pub(crate) struct Listeners {
    tasks: Vec<JoinHandle<()>>,
}

impl Listeners {
    /// Stops the listeners and waits until their sockets are closed.
    pub async fn stop(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Bound (not yet serving) sockets of one capsule.
#[derive(Debug)]
pub(crate) struct Bound {
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
}

/// Binds UDP and TCP sockets to `addr:53` even before `addr` exists (`IP_FREEBIND`).
/// `AddrInUse` means another forwarder serves that address.
pub(crate) fn bind(addr: Ipv4Addr) -> io::Result<Bound> {
    let at = SocketAddr::new(IpAddr::V4(addr), DNS_PORT);
    let udp = socket(SocketType::DGRAM, ipproto::UDP, at)?;
    let tcp = socket(SocketType::STREAM, ipproto::TCP, at)?;
    rustix::net::listen(&tcp, 64)?;
    Ok(Bound {
        udp: std::net::UdpSocket::from(udp),
        tcp: std::net::TcpListener::from(tcp),
    })
}

fn socket(kind: SocketType, proto: rustix::net::Protocol, at: SocketAddr) -> io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        kind,
        rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        Some(proto),
    )?;
    sockopt::set_ip_freebind(&fd, true)?;
    if kind == SocketType::STREAM {
        // A listener of a previous capsule on this slot may linger in TIME_WAIT.
        sockopt::set_socket_reuseaddr(&fd, true)?;
    }
    rustix::net::bind(&fd, &at)?;
    Ok(fd)
}

impl Forwarder {
    /// A forwarder relaying to the resolvers in `options.resolv_conf`, never to an
    /// address in `exclude`.
    pub fn new(options: DnsOptions, exclude: wrenn_core::config::Cidr) -> Self {
        let inflight = Arc::new(Semaphore::new(options.max_inflight));
        Self {
            options,
            exclude,
            upstreams: Mutex::new(Upstreams {
                checked: Instant::now() - RESOLV_CONF_RECHECK * 2,
                stamp: None,
                servers: Vec::new(),
            }),
            inflight,
        }
    }

    /// Starts serving `bound` (must run inside the tokio runtime).
    pub fn serve(self: &Arc<Self>, bound: Bound, sandbox: &str) -> io::Result<Listeners> {
        let udp = UdpSocket::from_std(bound.udp)?;
        let tcp = TcpListener::from_std(bound.tcp)?;
        let span = tracing::info_span!("dns", sandbox_id = %sandbox);
        let per_capsule = Arc::new(Semaphore::new(self.options.max_inflight_per_capsule));
        let tcp_slots = Arc::new(Semaphore::new(self.options.max_tcp_per_capsule));
        let udp_task = tokio::spawn(tracing::Instrument::instrument(
            self.clone().serve_udp(udp, per_capsule.clone()),
            span.clone(),
        ));
        let tcp_task = tokio::spawn(tracing::Instrument::instrument(
            self.clone().serve_tcp(tcp, per_capsule, tcp_slots),
            span,
        ));
        Ok(Listeners {
            tasks: vec![udp_task, tcp_task],
        })
    }

    /// Receives queries and sends answers on `socket`. Relays run in their own tasks
    /// and hand their answers back over a channel, so only this future owns the socket:
    /// aborting it closes the socket.
    async fn serve_udp(self: Arc<Self>, socket: UdpSocket, per_capsule: Arc<Semaphore>) {
        let (answers_tx, mut answers) = tokio::sync::mpsc::channel::<(Vec<u8>, SocketAddr)>(
            self.options.max_inflight_per_capsule,
        );
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let (n, client) = tokio::select! {
                received = socket.recv_from(&mut buf) => match received {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!("dns udp receive: {}", error_chain(&e));
                        continue;
                    }
                },
                Some((answer, client)) = answers.recv() => {
                    if let Err(e) = socket.send_to(&answer, client).await {
                        tracing::debug!("dns udp answer: {}", error_chain(&e));
                    }
                    continue;
                }
            };
            if n < 12 {
                continue;
            }
            let (Ok(local), Ok(global)) = (
                per_capsule.clone().try_acquire_owned(),
                self.inflight.clone().try_acquire_owned(),
            ) else {
                tracing::debug!("dns: too many queries in flight, dropping one");
                continue;
            };
            let query = buf[..n].to_vec();
            let this = self.clone();
            let tx = answers_tx.clone();
            tokio::spawn(async move {
                let answer = match this.relay_udp(&query).await {
                    Some(a) => a,
                    None => server_failure(&query),
                };
                let _ = tx.send((answer, client)).await;
                drop((local, global));
            });
        }
    }

    /// Accepts TCP clients; their connections live in a set owned by this future, so
    /// aborting it closes the listener and every connection.
    async fn serve_tcp(
        self: Arc<Self>,
        listener: TcpListener,
        per_capsule: Arc<Semaphore>,
        slots: Arc<Semaphore>,
    ) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!("dns tcp accept: {}", error_chain(&e));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                Some(_) = connections.join_next() => continue,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue; // dropping the stream closes it
            };
            let this = self.clone();
            let per_capsule = per_capsule.clone();
            connections.spawn(async move {
                if let Err(e) = this.relay_tcp(stream, per_capsule).await {
                    tracing::debug!("dns tcp client: {}", error_chain(&e));
                }
                drop(slot);
            });
        }
    }

    /// The current upstream servers (re-reading `resolv.conf` if it changed).
    fn servers(&self) -> Vec<SocketAddr> {
        let mut up = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        if up.checked.elapsed() >= RESOLV_CONF_RECHECK || up.stamp.is_none() {
            up.checked = Instant::now();
            let stamp = std::fs::metadata(&self.options.resolv_conf)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            if stamp != up.stamp || up.servers.is_empty() {
                let text = std::fs::read_to_string(&self.options.resolv_conf).unwrap_or_default();
                up.servers = parse_resolv_conf(&text)
                    .into_iter()
                    .filter(|s| !self.exclude.contains(s.ip()))
                    .collect();
                up.stamp = stamp;
                tracing::debug!(servers = ?up.servers, "dns upstreams");
            }
        }
        up.servers.clone()
    }

    async fn relay_udp(&self, query: &[u8]) -> Option<Vec<u8>> {
        for server in self.servers() {
            let exchange = async {
                let local: SocketAddr = if server.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let sock = UdpSocket::bind(local).await?;
                sock.connect(server).await?;
                sock.send(query).await?;
                let mut buf = vec![0u8; MAX_MESSAGE];
                loop {
                    let n = sock.recv(&mut buf).await?;
                    if is_answer_to(&buf[..n], query) {
                        buf.truncate(n);
                        return Ok::<_, io::Error>(buf);
                    }
                }
            };
            match tokio::time::timeout(self.options.upstream_timeout, exchange).await {
                Ok(Ok(answer)) => return Some(answer),
                Ok(Err(e)) => tracing::debug!(%server, "dns upstream: {}", error_chain(&e)),
                Err(_) => tracing::debug!(%server, "dns upstream timed out"),
            }
        }
        None
    }

    async fn relay_tcp(
        &self,
        mut client: TcpStream,
        per_capsule: Arc<Semaphore>,
    ) -> io::Result<()> {
        let mut upstream: Option<TcpStream> = None;
        loop {
            let query =
                match tokio::time::timeout(self.options.tcp_idle_timeout, read_framed(&mut client))
                    .await
                {
                    Ok(Ok(Some(q))) => q,
                    Ok(Ok(None)) | Err(_) => return Ok(()),
                    Ok(Err(e)) => return Err(e),
                };
            let (Ok(_local), Ok(_global)) = (
                per_capsule.clone().try_acquire_owned(),
                self.inflight.clone().try_acquire_owned(),
            ) else {
                return Ok(());
            };
            // Over TCP first; a resolver that does not speak TCP is asked over UDP.
            let answer = match self.exchange_tcp(&mut upstream, &query).await {
                Some(a) => a,
                None => self
                    .relay_udp(&query)
                    .await
                    .unwrap_or_else(|| server_failure(&query)),
            };
            write_framed(&mut client, &answer).await?;
        }
    }

    /// One query over TCP, reusing `conn` (or connecting to the first upstream that
    /// answers).
    async fn exchange_tcp(&self, conn: &mut Option<TcpStream>, query: &[u8]) -> Option<Vec<u8>> {
        let timeout = self.options.upstream_timeout;
        if let Some(stream) = conn.as_mut() {
            match tokio::time::timeout(timeout, ask(stream, query)).await {
                Ok(Ok(a)) if is_answer_to(&a, query) => return Some(a),
                _ => *conn = None,
            }
        }
        for server in self.servers() {
            let attempt = async {
                let mut stream = TcpStream::connect(server).await?;
                let answer = ask(&mut stream, query).await?;
                Ok::<_, io::Error>((stream, answer))
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok((stream, answer))) if is_answer_to(&answer, query) => {
                    *conn = Some(stream);
                    return Some(answer);
                }
                Ok(Ok(_)) => tracing::debug!(%server, "dns upstream: mismatched answer"),
                Ok(Err(e)) => tracing::debug!(%server, "dns upstream (tcp): {}", error_chain(&e)),
                Err(_) => tracing::debug!(%server, "dns upstream (tcp) timed out"),
            }
        }
        None
    }
}

async fn ask(stream: &mut TcpStream, query: &[u8]) -> io::Result<Vec<u8>> {
    write_framed(stream, query).await?;
    read_framed(stream)
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "upstream closed"))
}

/// Reads one length-prefixed message; `None` at a clean end of stream.
async fn read_framed(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::from(u16::from_be_bytes(len));
    if len < 12 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short DNS message",
        ));
    }
    let mut msg = vec![0u8; len];
    stream.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "DNS message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

/// Whether `answer` is a response (QR set) with `query`'s id.
fn is_answer_to(answer: &[u8], query: &[u8]) -> bool {
    answer.len() >= 12 && answer[..2] == query[..2] && answer[2] & 0x80 != 0
}

/// A SERVFAIL answer to `query`: its header with QR and RA set and RCODE 2, and its
/// question; no records.
fn server_failure(query: &[u8]) -> Vec<u8> {
    let mut out = query.to_vec();
    out[2] = (query[2] & 0x79) | 0x80; // QR, keep opcode and RD
    out[3] = 0x80 | 0x02; // RA, RCODE = SERVFAIL
    // No answer, authority or additional records (the OPT record of EDNS included).
    out[6..12].fill(0);
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    let end = question_end(query, qdcount).unwrap_or(12);
    if end == 12 {
        out[4..6].fill(0);
    }
    out.truncate(end);
    out
}

/// Where the question section of a message with `qdcount` questions ends.
fn question_end(msg: &[u8], qdcount: u16) -> Option<usize> {
    let mut at = 12;
    for _ in 0..qdcount {
        loop {
            let len = usize::from(*msg.get(at)?);
            if len & 0xc0 != 0 {
                return None; // compression pointers never appear in questions of queries
            }
            at += 1 + len;
            if len == 0 {
                break;
            }
        }
        at += 4; // type, class
    }
    (at <= msg.len()).then_some(at)
}

/// The `nameserver` lines of a `resolv.conf` (at most three, port 53). None → the
/// resolver's default, the local host.
pub(crate) fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            let addr = words.next()?;
            // Drop an IPv6 zone (`fe80::1%eth0`): not routable from a socket without it.
            let ip: IpAddr = addr.split('%').next()?.parse().ok()?;
            Some(SocketAddr::new(ip, DNS_PORT))
        })
        .take(MAX_UPSTREAMS)
        .collect();
    if out.is_empty() {
        out.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DNS_PORT));
    }
    out
}

/// The `/etc/resolv.conf` a capsule whose gateway is `gateway` uses.
pub(crate) fn capsule_resolv_conf(gateway: Ipv4Addr) -> String {
    format!(
        "# Written by wrenn: the agent's DNS forwarder on this capsule's gateway.\n\
         nameserver {gateway}\n\
         options edns0\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_come_from_resolv_conf_with_localhost_as_the_default() {
        let text = "# comment\nsearch example.com\nnameserver 10.255.255.53\n\
                    nameserver fe80::1%eth0\nnameserver bogus\nnameserver 1.1.1.1\n\
                    nameserver 8.8.8.8\noptions ndots:2\n";
        let servers: Vec<String> = parse_resolv_conf(text)
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(servers, ["10.255.255.53:53", "[fe80::1]:53", "1.1.1.1:53"]);
        assert_eq!(
            parse_resolv_conf("search x\n"),
            vec!["127.0.0.1:53".parse().unwrap()]
        );
    }

    #[test]
    fn a_server_failure_keeps_the_id_and_question_and_drops_the_rest() {
        // id 0xabcd, RD, 1 question (example.com A IN), 1 additional (EDNS OPT).
        let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        q.extend(b"\x07example\x03com\x00\x00\x01\x00\x01");
        let question_end = q.len();
        q.extend([0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        let a = server_failure(&q);
        assert_eq!(&a[..2], &[0xab, 0xcd]);
        assert_eq!(a[2], 0x81, "QR and RD");
        assert_eq!(a[3] & 0x0f, 2, "SERVFAIL");
        assert_eq!(&a[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(a.len(), question_end);
        assert!(is_answer_to(&a, &q));
        assert!(!is_answer_to(&q, &q), "a query is no answer");
    }
}
