//! Networks are made, read back, kept ready, adopted and removed without leftovers.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_teardown_leaves_no_namespace_veth_listener_or_rule() {
    let host = Host::new().await;
    let capsule = host.capsule().await;
    let net = capsule.net();
    let id = capsule.instance.id;
    assert!(network::netns_path(&net.netns).exists());
    assert!(Path::new("/sys/class/net").join(&net.veth).exists());
    assert!(host.runtime.networking().serves_dns(&net.netns));
    // One table for all capsules: nothing in it names a capsule.
    let table = nft_table("wrenn");
    assert!(!table.is_empty(), "our table exists");
    assert!(!table.contains(&net.veth) && !table.contains(&net.sandbox_addr.to_string()));

    let started = Instant::now();
    host.runtime.destroy(id).await.unwrap();
    eprintln!("destroy took {:?}", started.elapsed());
    std::mem::forget(capsule); // destroyed already
    // The network goes right after destroy answers (its processes are killed first).
    host.runtime.removals_settled().await;

    assert!(
        !network::netns_path(&net.netns).exists(),
        "namespace file left"
    );
    assert!(!ip(&["netns", "list"]).contains(&net.netns));
    assert!(!host.runtime.networking().serves_dns(&net.netns));
    // The DNS sockets are closed: the gateway's port 53 can be bound again.
    for _ in 0..2 {
        let udp = std::net::UdpSocket::bind((net.host_addr, 53));
        // The address itself may already be gone with the veth: that is fine too.
        if let Err(e) = &udp {
            assert_eq!(e.kind(), std::io::ErrorKind::AddrNotAvailable, "{e}");
        }
    }
    // The kernel removes the veth pair with the namespace, in the background.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new("/sys/class/net").join(&net.veth).exists() {
        assert!(Instant::now() < deadline, "veth {} left", net.veth);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("veth gone {:?} after destroy started", started.elapsed());
    assert_eq!(
        nft_table("wrenn"),
        table,
        "the firewall does not change per capsule"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_the_firewall_is_one_table_of_ours_that_nft_reads_back() {
    let table = format!("network_{}", std::process::id());
    let options = NetworkOptions {
        range: Ipv4Range::new(Ipv4Addr::new(10, 203, 0, 0), 16).unwrap(),
        table: table.clone(),
        egress: EgressConfig {
            allow: vec!["10.9.0.0/16".parse().unwrap()],
            deny: vec!["0.0.0.0/0".parse().unwrap()],
        },
        ..Default::default()
    };
    let network = Network::new(options).await.unwrap();
    network.reassert().await.unwrap();
    let listed = nft_table(&table);
    drop(network);
    network::delete_firewall(&table).await.unwrap();
    let gone = nft_table(&table);
    eprintln!("{listed}");
    for line in [
        "type filter hook prerouting priority mangle; policy accept;",
        "iifname \"wrenn-v*\" fib saddr . iif oif 0 counter packets 0 bytes 0 drop",
        "type filter hook input priority filter - 5; policy accept;",
        "meta nfproto ipv6 iifname \"wrenn-v*\" counter packets 0 bytes 0 drop",
        "iifname \"wrenn-v*\" ip saddr 10.203.0.0/16 jump capsule_to_host",
        "ct state established,related accept",
        "ip daddr 10.203.0.0/16 udp dport 53 accept",
        "ip daddr 10.203.0.0/16 tcp dport 53 accept",
        "ip daddr 10.203.0.0/16 icmp type echo-request accept",
        "type filter hook forward priority filter - 5; policy accept;",
        "iifname \"wrenn-v*\" ip saddr 10.203.0.0/16 jump egress",
        "oifname \"wrenn-v*\" ip daddr 10.203.0.0/16 ct state established,related accept",
        "oifname \"wrenn-v*\" ip daddr 10.203.0.0/16 counter packets 0 bytes 0 drop",
        "ip daddr 10.203.0.0/16 counter packets 0 bytes 0 reject with icmpx admin-prohibited",
        "ip daddr 10.9.0.0/16 accept",
        "ip daddr 0.0.0.0/0 counter packets 0 bytes 0 reject with icmpx admin-prohibited",
        "ip daddr 169.254.0.0/16 counter packets 0 bytes 0 reject with icmpx admin-prohibited",
        "ip6 daddr fc00::/7 counter packets 0 bytes 0 reject with icmpx admin-prohibited",
        "type nat hook postrouting priority srcnat; policy accept;",
        "ip saddr 10.203.0.0/16 ip daddr != 10.203.0.0/16 masquerade",
    ] {
        assert!(listed.contains(line), "missing {line:?} in:\n{listed}");
    }
    // The host's own network (from netlink) is denied, the documentation ranges are not.
    let host_net = format!("{}", host_address());
    let host_net = host_net.rsplit_once('.').unwrap().0;
    assert!(
        listed.contains(&format!("ip daddr {host_net}.0/")),
        "{listed}"
    );
    assert!(!listed.contains("203.0.113.0") && !listed.contains("198.51.100.0"));
    // The allow comes before the catch-all deny (most specific first).
    assert!(listed.find("10.9.0.0/16 accept") < listed.find("0.0.0.0/0 counter"));
    assert!(gone.is_empty(), "deleted: {gone}");
}

/// Asks `server` (UDP) for `name`'s address; true if an answer with records came back.
async fn resolves(server: Ipv4Addr, name: &str) -> bool {
    let mut q = vec![0x57, 0x52, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
    socket.send_to(&q, (server, 53)).await.unwrap();
    let mut answer = [0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut answer)).await {
        Ok(Ok(n)) => n > 12 && answer[..2] == q[..2] && answer[3] & 15 == 0 && answer[7] > 0,
        _ => false,
    }
}

/// Host interfaces whose name starts with `prefix`.
fn host_interfaces(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_spare_networks_are_ready_configured_and_vanish_with_the_agent() {
    let prefix = "wrspare-v";
    let network = Network::new(NetworkOptions {
        range: Ipv4Range::new(Ipv4Addr::new(10, 205, 0, 0), 16).unwrap(),
        table: format!("wrenn_nettest_spare_{}", std::process::id()),
        interface_prefix: prefix.into(),
        spare_networks: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while network.spares_ready() < 2 {
        assert!(
            Instant::now() < deadline,
            "spare networks never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each spare holds a slot: its host end exists, addressed and up.
    assert_eq!(host_interfaces(prefix).len(), 2);

    // A prepared capsule network is a spare, named: already addressed inside.
    let name = format!("wrenn-netspare-{}", std::process::id());
    let net = network.attach(&name, &name).await.unwrap();
    assert!(net.veth.starts_with(prefix));
    let inside = Command::new("ip")
        .args(["-n", &name, "-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    let inside = String::from_utf8_lossy(&inside.stdout);
    assert!(
        inside.contains(&format!("{}/30", net.sandbox_addr)),
        "{inside}"
    );
    assert!(
        resolves(net.host_addr, "deb.debian.org").await,
        "the forwarder answers"
    );
    network.remove(&name).await.unwrap();

    // The agent goes away: its spares (unnamed namespaces) take their veths along.
    drop(network);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !host_interfaces(prefix).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            host_interfaces(prefix)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    network::delete_firewall(&format!("wrenn_nettest_spare_{}", std::process::id()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_a_restarted_agent_adopts_a_capsule_network_and_serves_its_dns() {
    let name = format!("wrenn-netadopt-{}", std::process::id());
    let first = Network::new(NetworkOptions::default()).await.unwrap();
    let net = first.attach(&name, &name).await.unwrap();
    assert!(
        resolves(net.host_addr, "deb.debian.org").await,
        "the forwarder answers"
    );
    let recorded = serde_json::to_string(&net).unwrap();
    drop(first); // the agent goes away; the namespace and veth stay

    let second = Network::new(NetworkOptions::default()).await.unwrap();
    let net: network::SandboxNet = serde_json::from_str(&recorded).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match second.adopt(&net, &name).await {
            Ok(()) => break,
            // The first agent's sockets close as its tasks wind down.
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("adopt: {e}"),
        }
    }
    assert!(second.serves_dns(&name));
    assert!(
        resolves(net.host_addr, "deb.debian.org").await,
        "served again"
    );
    second.remove(&name).await.unwrap();
    assert!(!network::netns_path(&name).exists());
    let missing = second.adopt(&net, &name).await.unwrap_err();
    let missing = wrenn_core::report::error_chain(&missing);
    assert!(missing.contains(&name), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_setup_and_teardown_timings() {
    let network = Network::new(NetworkOptions::default()).await.unwrap();
    let mut create = Vec::new();
    let mut attach = Vec::new();
    let mut remove = Vec::new();
    for i in 0..30 {
        let name = format!("wrenn-nettime-{}-{i}", std::process::id());
        let t = Instant::now();
        let claimed = network.prepare(&name).await.unwrap();
        create.push(t.elapsed());
        let t = Instant::now();
        let net = network.serve(claimed, &name).await.unwrap();
        attach.push(t.elapsed());
        assert!(Path::new("/sys/class/net").join(&net.veth).exists());
        let t = Instant::now();
        network.remove(&name).await.unwrap();
        remove.push(t.elapsed());
        assert!(!network::netns_path(&name).exists());
    }
    drop(network);
    // The same inside whole capsules: create (network setup overlaps the cgroups and
    // envd's start) and destroy (network removal is an unmount).
    let host = Host::new().await;
    let mut capsule_create = Vec::new();
    let mut capsule_destroy = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let capsule = host.capsule().await;
        capsule_create.push(t.elapsed());
        let t = Instant::now();
        host.runtime.destroy(capsule.instance.id).await.unwrap();
        capsule_destroy.push(t.elapsed());
        std::mem::forget(capsule);
    }
    host.runtime.removals_settled().await;
    let p = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() - 1) as f64 * q) as usize]
    };
    eprintln!(
        "capsule create p50 {:?} p90 {:?}; destroy p50 {:?} p90 {:?}",
        p(&mut capsule_create, 0.5),
        p(&mut capsule_create, 0.9),
        p(&mut capsule_destroy, 0.5),
        p(&mut capsule_destroy, 0.9)
    );
    eprintln!(
        "prepare (a spare named, else netns + veth + addresses) p50 {:?} p90 {:?}; serve DNS p50 {:?} p90 {:?}; \
         remove p50 {:?} p90 {:?}",
        p(&mut create, 0.5),
        p(&mut create, 0.9),
        p(&mut attach, 0.5),
        p(&mut attach, 0.9),
        p(&mut remove, 0.5),
        p(&mut remove, 0.9)
    );
}
