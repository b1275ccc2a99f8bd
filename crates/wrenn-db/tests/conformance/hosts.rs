//! HostRepo: hosts, load, tags, registration and refresh tokens.

use chrono::Duration;
use wrenn_core::id::{HostId, HostRefreshTokenId, HostTokenId};
use wrenn_core::lifecycle::{HostStatus, SandboxStatus};
use wrenn_core::model::{HostKind, HostRefreshToken, HostToken};
use wrenn_core::repo::NewHost;

use crate::fixtures::*;

fn token(host: HostId, expires_in: Duration) -> HostToken {
    HostToken {
        id: HostTokenId::new(),
        host_id: host,
        token_hash: format!("{:064x}", uuid::Uuid::new_v4().as_u128()),
        created_by: None,
        created_at: now(),
        expires_at: now() + expires_in,
        used_at: None,
    }
}

fn refresh(host: HostId, expires_in: Duration) -> HostRefreshToken {
    HostRefreshToken {
        id: HostRefreshTokenId::new(),
        host_id: host,
        token_hash: format!("{:064x}", uuid::Uuid::new_v4().as_u128()),
        expires_at: now() + expires_in,
        created_at: now(),
        revoked_at: None,
    }
}

async fn hosts_start_pending_and_register_once(db: Db) {
    let creator = user(&db).await;
    let host = host(&db, Some(creator.id)).await;
    assert_eq!(host.status, HostStatus::Pending);
    assert_eq!(host.kind, HostKind::Regular);
    assert_eq!(host.created_by, Some(creator.id));
    assert_eq!(host.provider, "test");
    assert_eq!(host.availability_zone, "az-1");
    assert_eq!(host.address, "");
    assert_eq!(host.metadata, serde_json::json!({}));
    assert!(host.last_heartbeat_at.is_none());
    assert_eq!(db.get_host(host.id).await.unwrap(), host);

    assert!(
        db.register_host(host.id, &spec("10.0.0.1:50051"))
            .await
            .unwrap()
    );
    let online = db.get_host(host.id).await.unwrap();
    assert_eq!(online.status, HostStatus::Online);
    assert_eq!(online.address, "10.0.0.1:50051");
    assert_eq!(
        (online.cpu_cores, online.memory_mb, online.disk_gb),
        (16, 65_536, 500)
    );
    assert_eq!(online.arch, "x86_64");
    assert!(online.last_heartbeat_at.is_some());
    assert!(
        !db.register_host(host.id, &spec("10.0.0.2:50051"))
            .await
            .unwrap()
    );
    assert_not_found(db.register_host(HostId::new(), &spec("x")).await);
    assert_not_found(db.get_host(HostId::new()).await);
}

async fn heartbeats_bring_unreachable_hosts_back_online(db: Db) {
    let host = online_host(&db, "10.0.0.1:1").await;
    let first = host.last_heartbeat_at.unwrap();
    assert_eq!(
        db.heartbeat(host.id, &spec("10.0.0.1:1")).await.unwrap(),
        HostStatus::Online
    );
    assert!(
        db.set_host_status_if(host.id, HostStatus::Online, HostStatus::Unreachable)
            .await
            .unwrap()
    );
    assert_eq!(
        db.heartbeat(host.id, &spec("10.0.0.9:1")).await.unwrap(),
        HostStatus::Unreachable
    );
    let back = db.get_host(host.id).await.unwrap();
    assert_eq!(back.status, HostStatus::Online);
    assert_eq!(back.address, "10.0.0.9:1");
    assert!(back.last_heartbeat_at.unwrap() >= first);
    // Other statuses are left alone.
    assert!(
        db.set_host_status_if(host.id, HostStatus::Online, HostStatus::Draining)
            .await
            .unwrap()
    );
    assert_eq!(
        db.heartbeat(host.id, &spec("10.0.0.9:1")).await.unwrap(),
        HostStatus::Draining
    );
    assert_eq!(
        db.get_host(host.id).await.unwrap().status,
        HostStatus::Draining
    );
    assert_not_found(db.heartbeat(HostId::new(), &spec("x")).await);
}

async fn host_status_changes_only_from_the_expected_status(db: Db) {
    let host = host(&db, None).await;
    assert!(
        !db.set_host_status_if(host.id, HostStatus::Online, HostStatus::Offline)
            .await
            .unwrap()
    );
    assert!(
        db.set_host_status_if(host.id, HostStatus::Pending, HostStatus::Offline)
            .await
            .unwrap()
    );
    assert_eq!(
        db.get_host(host.id).await.unwrap().status,
        HostStatus::Offline
    );
    assert_not_found(
        db.set_host_status_if(HostId::new(), HostStatus::Online, HostStatus::Offline)
            .await,
    );
}

async fn hosts_are_listed_all_or_per_byoc_team_and_the_monitor_skips_pending_and_offline(db: Db) {
    let (owner, team) = owned_team(&db).await;
    db.set_team_byoc(team.id, true).await.unwrap();
    let regular = online_host(&db, "10.0.0.1:1").await;
    let pending = host(&db, None).await;
    let offline = online_host(&db, "10.0.0.2:1").await;
    db.set_host_status_if(offline.id, HostStatus::Online, HostStatus::Offline)
        .await
        .unwrap();
    let byoc = db
        .create_host(NewHost {
            id: HostId::new(),
            kind: HostKind::Byoc,
            team_id: Some(team.id),
            provider: "own".into(),
            availability_zone: String::new(),
            created_by: Some(owner.id),
        })
        .await
        .unwrap();
    assert_eq!(byoc.team_id, Some(team.id));

    let all: Vec<HostId> = db
        .list_hosts(None)
        .await
        .unwrap()
        .iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(
        all,
        [regular.id, pending.id, offline.id, byoc.id],
        "oldest first"
    );
    let mine: Vec<HostId> = db
        .list_hosts(Some(team.id))
        .await
        .unwrap()
        .iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(mine, [byoc.id]);
    let active: Vec<HostId> = db
        .list_active_hosts()
        .await
        .unwrap()
        .iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(active, [regular.id]);
}

async fn host_load_sums_what_sandboxes_reserve(db: Db) {
    let (_, team) = owned_team(&db).await;
    let busy = online_host(&db, "10.0.0.1:1").await;
    let idle = online_host(&db, "10.0.0.2:1").await;
    let _unregistered = host(&db, None).await;
    let down = online_host(&db, "10.0.0.3:1").await;
    db.set_host_status_if(down.id, HostStatus::Online, HostStatus::Unreachable)
        .await
        .unwrap();

    use SandboxStatus::*;
    for status in [
        Running,
        Starting,
        Pending,
        Pausing,
        Resuming,
        Snapshotting,
        Stopping,
    ] {
        sandbox(&db, team.id, busy.id, status).await; // 2 vCPU, 1024 MB, 20480 MB disk each
    }
    sandbox(&db, team.id, busy.id, Paused).await;
    sandbox(&db, team.id, busy.id, Hibernated).await;
    for status in [Stopped, Error, Missing] {
        sandbox(&db, team.id, busy.id, status).await;
    }
    sandbox(&db, team.id, down.id, Running).await;

    let loads = db.list_hosts_with_load().await.unwrap();
    let ids: Vec<HostId> = loads.iter().map(|l| l.host.id).collect();
    assert_eq!(ids, [busy.id, idle.id], "online hosts with an address only");
    let busy_load = &loads[0];
    assert_eq!(busy_load.host, busy);
    assert_eq!(busy_load.running_vcpus, 14);
    assert_eq!(busy_load.running_memory_mb, 7 * 1024);
    assert_eq!(busy_load.running_disk_mb, 7 * 20_480);
    assert_eq!(busy_load.paused_memory_mb, 1024);
    assert_eq!(busy_load.paused_disk_mb, 2 * 20_480);
    let idle_load = &loads[1];
    assert_eq!(
        (
            idle_load.running_vcpus,
            idle_load.running_memory_mb,
            idle_load.paused_disk_mb
        ),
        (0, 0, 0)
    );
}

async fn host_certificates_are_recorded(db: Db) {
    let host = host(&db, None).await;
    let expires = now() + Duration::days(7);
    db.update_host_cert(host.id, "ab12", expires).await.unwrap();
    let stored = db.get_host(host.id).await.unwrap();
    assert_eq!(stored.cert_fingerprint, "ab12");
    assert_eq!(stored.cert_expires_at, Some(expires));
    assert_not_found(db.update_host_cert(HostId::new(), "x", expires).await);
}

async fn host_tags_are_a_sorted_set(db: Db) {
    let host = host(&db, None).await;
    db.add_host_tag(host.id, "gpu").await.unwrap();
    db.add_host_tag(host.id, "eu").await.unwrap();
    db.add_host_tag(host.id, "gpu").await.unwrap();
    assert_eq!(db.list_host_tags(host.id).await.unwrap(), ["eu", "gpu"]);
    assert!(db.remove_host_tag(host.id, "gpu").await.unwrap());
    assert!(!db.remove_host_tag(host.id, "gpu").await.unwrap());
    assert_eq!(db.list_host_tags(host.id).await.unwrap(), ["eu"]);
    assert_not_found(db.add_host_tag(HostId::new(), "eu").await);
}

async fn deleting_a_host_cascades_to_tokens_tags_and_refresh_tokens(db: Db) {
    let host = host(&db, None).await;
    let (_, team) = owned_team(&db).await;
    let sandbox = sandbox(&db, team.id, host.id, SandboxStatus::Stopped).await;
    db.add_host_tag(host.id, "eu").await.unwrap();
    let tok = db
        .create_host_token(token(host.id, Duration::hours(1)))
        .await
        .unwrap();
    let rt = db
        .create_refresh_token(refresh(host.id, Duration::days(60)))
        .await
        .unwrap();

    assert!(db.delete_host(host.id).await.unwrap());
    assert!(!db.delete_host(host.id).await.unwrap());
    assert_not_found(db.get_host(host.id).await);
    assert!(db.list_host_tags(host.id).await.unwrap().is_empty());
    assert_not_found(db.get_host_token(tok.id).await);
    assert!(
        db.get_valid_refresh_token(&rt.token_hash, now())
            .await
            .unwrap()
            .is_none()
    );
    // Sandbox rows outlive their host.
    assert_eq!(db.get_sandbox(sandbox.id).await.unwrap().host_id, host.id);
}

async fn registration_tokens_are_consumed_once_and_only_before_expiry(db: Db) {
    let creator = user(&db).await;
    let host = host(&db, None).await;
    let mut fresh = token(host.id, Duration::hours(1));
    fresh.created_by = Some(creator.id);
    let stored = db.create_host_token(fresh.clone()).await.unwrap();
    assert_eq!(stored, fresh);
    assert_eq!(db.get_host_token(fresh.id).await.unwrap(), fresh);

    let at = now();
    let used = db
        .consume_host_token(&fresh.token_hash, at)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(used.id, fresh.id);
    assert_eq!(used.used_at, Some(at));
    assert!(
        db.consume_host_token(&fresh.token_hash, at)
            .await
            .unwrap()
            .is_none()
    );

    let expired = db
        .create_host_token(token(host.id, Duration::seconds(-1)))
        .await
        .unwrap();
    assert!(
        db.consume_host_token(&expired.token_hash, now())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        db.consume_host_token("unknown", now())
            .await
            .unwrap()
            .is_none()
    );
    assert_not_found(db.get_host_token(HostTokenId::new()).await);
}

async fn concurrent_token_consumption_has_exactly_one_winner(db: Db) {
    let host = host(&db, None).await;
    let tok = db
        .create_host_token(token(host.id, Duration::hours(1)))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let db = db.clone();
            let hash = tok.token_hash.clone();
            tokio::spawn(async move { db.consume_host_token(&hash, now()).await })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        if task.await.unwrap().unwrap().is_some() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}

async fn host_tokens_need_a_unique_hash_and_an_existing_host(db: Db) {
    let host = host(&db, None).await;
    let first = db
        .create_host_token(token(host.id, Duration::hours(1)))
        .await
        .unwrap();
    let mut clash = token(host.id, Duration::hours(1));
    clash.token_hash = first.token_hash.clone();
    assert_conflict(db.create_host_token(clash).await);
    assert_invalid(
        db.create_host_token(token(HostId::new(), Duration::hours(1)))
            .await,
    );
}

async fn refresh_tokens_are_valid_until_revoked_or_expired(db: Db) {
    let host = host(&db, None).await;
    let other = self::host(&db, None).await;
    let a = db
        .create_refresh_token(refresh(host.id, Duration::days(60)))
        .await
        .unwrap();
    let b = db
        .create_refresh_token(refresh(host.id, Duration::days(60)))
        .await
        .unwrap();
    let c = db
        .create_refresh_token(refresh(other.id, Duration::days(60)))
        .await
        .unwrap();
    let old = db
        .create_refresh_token(refresh(host.id, Duration::seconds(-10)))
        .await
        .unwrap();

    assert_eq!(
        db.get_valid_refresh_token(&a.token_hash, now())
            .await
            .unwrap(),
        Some(a.clone())
    );
    assert!(
        db.get_valid_refresh_token(&old.token_hash, now())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        db.get_valid_refresh_token(&a.token_hash, now() + Duration::days(61))
            .await
            .unwrap()
            .is_none()
    );

    assert!(db.revoke_refresh_token(a.id).await.unwrap());
    assert!(!db.revoke_refresh_token(a.id).await.unwrap());
    assert!(
        db.get_valid_refresh_token(&a.token_hash, now())
            .await
            .unwrap()
            .is_none()
    );
    assert_not_found(db.revoke_refresh_token(HostRefreshTokenId::new()).await);

    // b and the expired one are still unrevoked.
    assert_eq!(db.revoke_host_refresh_tokens(host.id).await.unwrap(), 2);
    assert!(
        db.get_valid_refresh_token(&b.token_hash, now())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        db.get_valid_refresh_token(&c.token_hash, now())
            .await
            .unwrap()
            .is_some()
    );

    assert_eq!(db.delete_expired_refresh_tokens(now()).await.unwrap(), 1);
    assert_eq!(db.delete_expired_refresh_tokens(now()).await.unwrap(), 0);
}

conformance_tests!(
    hosts_start_pending_and_register_once,
    heartbeats_bring_unreachable_hosts_back_online,
    host_status_changes_only_from_the_expected_status,
    hosts_are_listed_all_or_per_byoc_team_and_the_monitor_skips_pending_and_offline,
    host_load_sums_what_sandboxes_reserve,
    host_certificates_are_recorded,
    host_tags_are_a_sorted_set,
    deleting_a_host_cascades_to_tokens_tags_and_refresh_tokens,
    registration_tokens_are_consumed_once_and_only_before_expiry,
    concurrent_token_consumption_has_exactly_one_winner,
    host_tokens_need_a_unique_hash_and_an_existing_host,
    refresh_tokens_are_valid_until_revoked_or_expired,
);
