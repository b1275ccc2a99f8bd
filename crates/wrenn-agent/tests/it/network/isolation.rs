//! Capsules reach neither each other nor the host; egress and DNS follow the rules.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_capsules_reach_neither_each_other_nor_the_host_even_past_competing_accept_rules() {
    let host = Host::new().await;
    let a = host.capsule().await;
    let b = host.capsule().await;
    let host_addr = host_address();

    // A server in each; the host reaches them (the port proxy's path).
    serve_in(&a, "from a").await;
    serve_in(&b, "from b").await;
    assert_eq!(
        b.tcp("127.0.0.1", 7000).await.as_deref(),
        Ok("from b"),
        "it works inside"
    );

    // Host servers: on every address, on the capsule's gateway, on the host's address.
    let any = Server::bind("0.0.0.0:0".parse().unwrap(), "host any").await;
    let on_gateway = Server::bind(SocketAddr::new(a.gateway().into(), 0), "host gateway").await;
    let on_host_addr = Server::bind(SocketAddr::new(host_addr.into(), 0), "host address").await;
    assert!(
        tokio::net::TcpStream::connect((host_addr, any.port()))
            .await
            .is_ok(),
        "the host servers work"
    );
    // `connect` returns once the kernel has the connection; the server's task counts
    // it when it accepts it, maybe later: the baseline includes it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while any.accepted() == 0 {
        assert!(
            Instant::now() < deadline,
            "the host's connection was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let any_accepted = any.accepted();

    let r = a.tcp(b.addr(), 7000).await;
    assert!(r.is_err(), "capsule A reached capsule B: {r:?}");
    assert!(!clients_of(&b).await.contains(&a.addr().to_string()));
    for (server, target) in [
        (&any, a.gateway()),
        (&any, host_addr),
        (&on_gateway, a.gateway()),
        (&on_host_addr, host_addr),
    ] {
        let r = a.tcp(target, server.port()).await;
        assert!(
            r.is_err(),
            "capsule → host {target}:{} reached: {r:?}",
            server.port()
        );
    }
    assert_eq!(any.accepted(), any_accepted);
    assert_eq!(on_gateway.accepted() + on_host_addr.accepted(), 0);

    // Docker-style ACCEPT rules inserted first into FORWARD and INPUT change nothing:
    // a drop in our table is final.
    {
        let _forward = CompetingAccept::insert("FORWARD");
        let _input = CompetingAccept::insert("INPUT");
        assert_isolated(&a, &b, &[&any, &on_gateway], host_addr).await;
        assert_isolated(&b, &a, &[&any, &on_host_addr], host_addr).await;
        assert_eq!(any.accepted(), any_accepted);
    }
    // Still: the host reaches the capsules (the port proxy's path).
    assert!(
        tokio::net::TcpStream::connect((b.addr(), 7000))
            .await
            .is_ok()
    );
    assert!(
        tokio::net::TcpStream::connect((a.addr(), 7000))
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_egress_drops_private_cgnat_and_link_local_and_allows_documentation_ranges() {
    let test_host = TestHost::new(41).await;
    let host = Host::new().await;
    let capsule = host.capsule().await;

    assert_eq!(
        capsule
            .tcp(test_host.documentation(), 7777)
            .await
            .as_deref(),
        Ok("hello from the test host"),
        "documentation ranges (where package mirrors may sit) are allowed"
    );
    let reached = test_host.server.accepted();
    for blocked in [
        test_host.private(),
        test_host.cgnat(),
        test_host.link_local(),
    ] {
        let r = capsule.tcp(&blocked, 7777).await;
        assert!(r.is_err(), "capsule reached {blocked}: {r:?}");
    }
    assert_eq!(
        test_host.server.accepted(),
        reached,
        "the test host saw a blocked client"
    );
    // The host itself reaches them all (the block is for capsules only).
    for addr in [
        test_host.private(),
        test_host.cgnat(),
        test_host.documentation(),
    ] {
        let addr: Ipv4Addr = addr.parse().unwrap();
        assert!(
            tokio::net::TcpStream::connect((addr, 7777)).await.is_ok(),
            "{addr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_egress_allow_list_lets_a_capsule_reach_an_otherwise_blocked_private_host() {
    let test_host = TestHost::new(42).await;
    let table = format!("wrenn_nettest_allow_{}", std::process::id());
    let host = Host::with(NetworkOptions {
        range: Ipv4Range::new(Ipv4Addr::new(10, 202, 0, 0), 16).unwrap(),
        table: table.clone(),
        egress: EgressConfig {
            allow: vec![format!("172.31.{}.0/24", test_host.k).parse().unwrap()],
            deny: vec![test_host.documentation().parse().unwrap()],
        },
        ..Default::default()
    })
    .await;
    let capsule = host.capsule().await;
    let result = async {
        let private = capsule.tcp(test_host.private(), 7777).await;
        let documentation = capsule.tcp(test_host.documentation(), 7777).await;
        let cgnat = capsule.tcp(test_host.cgnat(), 7777).await;
        (private, documentation, cgnat)
    }
    .await;
    drop(capsule);
    drop(host);
    network::delete_firewall(&table).await.unwrap();
    assert!(nft_table(&table).is_empty(), "the test table is gone");

    let (private, documentation, cgnat) = result;
    assert_eq!(
        private.as_deref(),
        Ok("hello from the test host"),
        "allowed"
    );
    assert!(
        documentation.is_err(),
        "WRENN_EGRESS_DENY beats the default allow: {documentation:?}"
    );
    assert!(
        cgnat.is_err(),
        "the rest of the default deny holds: {cgnat:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_capsules_resolve_names_through_the_forwarder_not_the_private_resolver() {
    let host = Host::new().await;
    let capsule = host.capsule().await;
    let gateway = capsule.gateway();

    let (resolv, code) = capsule.sh("cat /etc/resolv.conf").await;
    assert_eq!(code, 0);
    assert!(
        resolv.contains(&format!("nameserver {gateway}\n")),
        "{resolv}"
    );
    // A plain file of the capsule's root (written at every start; no host path
    // behind it), not writable by its users.
    assert_eq!(
        capsule.sh("stat -c %u:%a /etc/resolv.conf").await.0.trim(),
        "0:644"
    );
    assert_ne!(
        capsule
            .sh(
                "setpriv --reuid=1000 --regid=1000 --clear-groups sh -c 'echo x > /etc/resolv.conf'"
            )
            .await
            .1,
        0,
        "users cannot redirect the capsule's DNS"
    );

    let (hosts, code) = capsule.sh("getent hosts deb.debian.org").await;
    assert_eq!(code, 0, "resolving through the forwarder: {hosts}");
    let expected = Command::new("getent")
        .args(["hosts", "deb.debian.org"])
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&expected.stdout);
    let first = expected.split_whitespace().next().unwrap_or("(none)");
    assert!(
        hosts.contains(first),
        "capsule {hosts:?} vs host {expected:?}"
    );

    // The same over TCP, and the host's resolver is not reachable directly.
    let query = r#"
import socket, struct, sys
server, tcp = sys.argv[1], sys.argv[2] == "tcp"
q = struct.pack("!HHHHHH", 0x5752, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in "deb.debian.org".split(".")) + b"\0"
q += struct.pack("!HH", 1, 1)
if tcp:
    s = socket.create_connection((server, 53), timeout=3)
    s.sendall(struct.pack("!H", len(q)) + q)
    n = struct.unpack("!H", s.recv(2))[0]
    a = s.recv(n)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(q, (server, 53))
    a = s.recv(4096)
ok = a[:2] == q[:2] and a[3] & 15 == 0 and struct.unpack("!H", a[6:8])[0] > 0
print("answers" if ok else "bad answer")
"#;
    let (_, code) = capsule
        .sh(&format!("cat > /root/dnsq.py <<'EOF'\n{query}\nEOF"))
        .await;
    assert_eq!(code, 0);
    assert_eq!(
        capsule
            .sh(&format!("python3 /root/dnsq.py {gateway} tcp"))
            .await,
        ("answers\n".into(), 0)
    );
    assert_eq!(
        capsule
            .sh(&format!("python3 /root/dnsq.py {gateway} udp"))
            .await,
        ("answers\n".into(), 0)
    );
    let resolver = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("nameserver ")
                .map(str::trim)
                .map(str::to_owned)
        })
        .expect("the host has a resolver");
    let direct = capsule
        .sh(&format!("python3 /root/dnsq.py {resolver} udp"))
        .await;
    assert_ne!(
        direct.1, 0,
        "the capsule reached the host's resolver {resolver} directly: {direct:?}"
    );
    let direct = capsule
        .sh(&format!("python3 /root/dnsq.py {resolver} tcp"))
        .await;
    assert_ne!(
        direct.1, 0,
        "the capsule reached the host's resolver {resolver} over TCP: {direct:?}"
    );
}
