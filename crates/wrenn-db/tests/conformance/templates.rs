//! TemplateRepo: team and platform templates.

use std::collections::BTreeMap;

use wrenn_core::id::{BUILTIN_TEMPLATE_ID, PLATFORM_TEAM_ID, TeamId, TemplateId};
use wrenn_core::model::TemplateKind;
use wrenn_core::repo::NewTemplate;

use crate::fixtures::*;

fn template(team: TeamId, name: &str, kind: TemplateKind) -> NewTemplate {
    NewTemplate {
        id: TemplateId::new(),
        team_id: team,
        name: name.into(),
        kind,
        vcpus: 2,
        memory_mb: 2048,
        size_bytes: 1 << 30,
        default_user: "user".into(),
        default_env: BTreeMap::from([("LANG".into(), "C.UTF-8".into())]),
        metadata: BTreeMap::from([("kernel_version".into(), "6.1".into())]),
        start_command: "python3 -m http.server 8000".into(),
        start_cwd: "/srv".into(),
    }
}

async fn the_builtin_template_is_visible_to_every_team(db: Db) {
    let builtin = db.get_template(BUILTIN_TEMPLATE_ID).await.unwrap();
    assert_eq!(builtin.name, "minimal");
    assert_eq!(builtin.team_id, PLATFORM_TEAM_ID);
    assert_eq!(builtin.kind, TemplateKind::Base);
    assert_eq!((builtin.vcpus, builtin.memory_mb), (1, 512));
    assert!(builtin.protected);
    // Migration 0003: the default image's unprivileged user.
    assert_eq!(builtin.default_user, "wrenn-user");
    let (_, team) = owned_team(&db).await;
    assert_eq!(
        db.get_template_for_team(team.id, "minimal").await.unwrap(),
        builtin
    );
    assert!(
        db.list_templates_for_team(team.id, None)
            .await
            .unwrap()
            .contains(&builtin)
    );
}

async fn templates_round_trip(db: Db) {
    let (_, team) = owned_team(&db).await;
    let new = template(team.id, "python", TemplateKind::Snapshot);
    let stored = db.create_template(new.clone()).await.unwrap();
    assert_eq!(stored.id, new.id);
    assert_eq!(stored.team_id, team.id);
    assert_eq!(stored.kind, TemplateKind::Snapshot);
    assert_eq!(
        (stored.vcpus, stored.memory_mb, stored.size_bytes),
        (2, 2048, 1 << 30)
    );
    assert_eq!(stored.default_user, "user");
    assert_eq!(stored.default_env, new.default_env);
    assert_eq!(
        (stored.start_command.as_str(), stored.start_cwd.as_str()),
        ("python3 -m http.server 8000", "/srv")
    );
    assert_eq!(
        builtin_start(&db).await,
        "",
        "the built-in template starts nothing"
    );
    assert_eq!(stored.metadata, new.metadata);
    assert!(!stored.protected);
    assert_eq!(db.get_template(new.id).await.unwrap(), stored);
    assert_eq!(
        db.get_template_for_team(team.id, "python").await.unwrap(),
        stored
    );
}

async fn template_names_are_unique_per_team(db: Db) {
    let (_, team) = owned_team(&db).await;
    let (_, other) = owned_team(&db).await;
    db.create_template(template(team.id, "node", TemplateKind::Base))
        .await
        .unwrap();
    assert_conflict(
        db.create_template(template(team.id, "node", TemplateKind::Base))
            .await,
    );
    db.create_template(template(other.id, "node", TemplateKind::Base))
        .await
        .unwrap();
    // A team sees its own template, never another team's.
    let (_, third) = owned_team(&db).await;
    assert_not_found(db.get_template_for_team(third.id, "node").await);
}

async fn platform_template_names_are_reserved_for_every_team(db: Db) {
    let (_, team) = owned_team(&db).await;
    assert_conflict(
        db.create_template(template(team.id, "minimal", TemplateKind::Base))
            .await,
    );
    assert_conflict(
        db.upsert_template(template(team.id, "minimal", TemplateKind::Snapshot))
            .await,
    );
    db.create_template(template(PLATFORM_TEAM_ID, "ubuntu", TemplateKind::Base))
        .await
        .unwrap();
    assert_conflict(
        db.create_template(template(team.id, "ubuntu", TemplateKind::Base))
            .await,
    );
    assert_eq!(
        db.get_template_for_team(team.id, "ubuntu")
            .await
            .unwrap()
            .team_id,
        PLATFORM_TEAM_ID
    );
}

async fn upserting_a_template_replaces_it_in_place(db: Db) {
    let (_, team) = owned_team(&db).await;
    let first = db
        .upsert_template(template(team.id, "snap", TemplateKind::Snapshot))
        .await
        .unwrap();
    let mut again = template(team.id, "snap", TemplateKind::Snapshot);
    again.vcpus = 4;
    again.size_bytes = 7;
    let replaced = db.upsert_template(again).await.unwrap();
    assert_eq!(replaced.id, first.id, "the existing id is kept");
    assert_eq!(replaced.vcpus, 4);
    assert_eq!(replaced.size_bytes, 7);
    assert_eq!(
        db.list_team_owned_templates(team.id).await.unwrap(),
        [replaced]
    );
}

async fn protected_templates_cannot_be_deleted_or_replaced(db: Db) {
    assert!(
        !db.delete_template(PLATFORM_TEAM_ID, BUILTIN_TEMPLATE_ID)
            .await
            .unwrap()
    );
    assert_conflict(
        db.upsert_template(template(PLATFORM_TEAM_ID, "minimal", TemplateKind::Base))
            .await,
    );
    db.delete_team_templates(PLATFORM_TEAM_ID).await.unwrap();
    assert!(
        db.get_template(BUILTIN_TEMPLATE_ID)
            .await
            .unwrap()
            .protected
    );
}

async fn templates_are_listed_per_team_per_kind_and_in_full(db: Db) {
    let (_, team) = owned_team(&db).await;
    let (_, other) = owned_team(&db).await;
    let base = db
        .create_template(template(team.id, "base", TemplateKind::Base))
        .await
        .unwrap();
    let snap = db
        .create_template(template(team.id, "snap", TemplateKind::Snapshot))
        .await
        .unwrap();
    let foreign = db
        .create_template(template(other.id, "theirs", TemplateKind::Base))
        .await
        .unwrap();
    let builtin = db.get_template(BUILTIN_TEMPLATE_ID).await.unwrap();

    let visible = db.list_templates_for_team(team.id, None).await.unwrap();
    assert_eq!(
        visible,
        [snap.clone(), base.clone(), builtin.clone()],
        "newest first"
    );
    let bases = db
        .list_templates_for_team(team.id, Some(TemplateKind::Base))
        .await
        .unwrap();
    assert_eq!(bases, [base.clone(), builtin.clone()]);
    let snaps = db
        .list_templates_for_team(team.id, Some(TemplateKind::Snapshot))
        .await
        .unwrap();
    assert_eq!(snaps, std::slice::from_ref(&snap));
    assert_eq!(
        db.list_team_owned_templates(team.id).await.unwrap(),
        [snap.clone(), base.clone()]
    );
    let all = db.list_all_templates().await.unwrap();
    for t in [&base, &snap, &foreign, &builtin] {
        assert!(all.contains(t));
    }
}

async fn deleting_templates_is_scoped_to_the_owning_team(db: Db) {
    let (_, team) = owned_team(&db).await;
    let (_, other) = owned_team(&db).await;
    let a = db
        .create_template(template(team.id, "a", TemplateKind::Base))
        .await
        .unwrap();
    db.create_template(template(team.id, "b", TemplateKind::Snapshot))
        .await
        .unwrap();
    let theirs = db
        .create_template(template(other.id, "c", TemplateKind::Base))
        .await
        .unwrap();
    assert!(!db.delete_template(other.id, a.id).await.unwrap());
    assert!(db.delete_template(team.id, a.id).await.unwrap());
    assert!(!db.delete_template(team.id, a.id).await.unwrap());
    assert_eq!(db.delete_team_templates(team.id).await.unwrap(), 1);
    assert!(
        db.list_team_owned_templates(team.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(db.get_template(theirs.id).await.unwrap(), theirs);
}

async fn unknown_templates_and_teams_are_refused(db: Db) {
    assert_not_found(db.get_template(TemplateId::new()).await);
    let (_, team) = owned_team(&db).await;
    assert_not_found(db.get_template_for_team(team.id, "nope").await);
    assert_invalid(
        db.create_template(template(TeamId::new(), "x", TemplateKind::Base))
            .await,
    );
}

async fn a_templates_hosts_are_its_origin_and_its_copies(db: Db) {
    let (_, team) = owned_team(&db).await;
    let t = db
        .create_template(template(team.id, "snap", TemplateKind::Snapshot))
        .await
        .unwrap();
    let (a, b, c) = (
        host(&db, None).await,
        host(&db, None).await,
        host(&db, None).await,
    );
    assert!(db.template_hosts(t.id).await.unwrap().is_empty());
    db.set_template_origin(t.id, a.id).await.unwrap();
    db.add_template_host(t.id, b.id).await.unwrap();
    db.add_template_host(t.id, b.id).await.unwrap();
    let mut held = db.template_hosts(t.id).await.unwrap();
    held.sort();
    let mut want = vec![a.id, b.id];
    want.sort();
    assert_eq!(held, want, "a repeated copy is recorded once");

    // Overwritten from a capsule on `c`: the other copies are stale.
    db.set_template_origin(t.id, c.id).await.unwrap();
    assert_eq!(db.template_hosts(t.id).await.unwrap(), vec![c.id]);

    // A deleted host or template takes its records along.
    db.add_template_host(t.id, a.id).await.unwrap();
    db.delete_host(a.id).await.unwrap();
    assert_eq!(db.template_hosts(t.id).await.unwrap(), vec![c.id]);
    assert!(db.delete_template(team.id, t.id).await.unwrap());
    assert!(db.template_hosts(t.id).await.unwrap().is_empty());
}

conformance_tests!(
    a_templates_hosts_are_its_origin_and_its_copies,
    the_builtin_template_is_visible_to_every_team,
    templates_round_trip,
    template_names_are_unique_per_team,
    platform_template_names_are_reserved_for_every_team,
    upserting_a_template_replaces_it_in_place,
    protected_templates_cannot_be_deleted_or_replaced,
    templates_are_listed_per_team_per_kind_and_in_full,
    deleting_templates_is_scoped_to_the_owning_team,
    unknown_templates_and_teams_are_refused,
);

async fn builtin_start(db: &Db) -> String {
    db.get_template(BUILTIN_TEMPLATE_ID)
        .await
        .unwrap()
        .start_command
}
