//! WorkerLeaseRepo: leases of singleton workers, judged by the database's clock.

use std::time::Duration;

use crate::fixtures::*;

/// Long enough never to expire during a test.
const LONG: Duration = Duration::from_secs(60);
/// Short enough to wait out.
const SHORT: Duration = Duration::from_millis(300);

fn lease() -> String {
    format!("worker:test-{}", uuid::Uuid::new_v4().simple())
}

async fn a_free_lease_is_taken_and_others_are_refused_while_it_is_valid(db: Db) {
    let name = lease();
    assert_eq!(db.lease_holder(&name).await.unwrap(), None);
    assert!(db.acquire_lease(&name, "replica-a", LONG).await.unwrap());
    assert_eq!(
        db.lease_holder(&name).await.unwrap().as_deref(),
        Some("replica-a")
    );
    assert!(
        !db.acquire_lease(&name, "replica-b", LONG).await.unwrap(),
        "a second holder is refused while the lease is valid"
    );
    assert_eq!(
        db.lease_holder(&name).await.unwrap().as_deref(),
        Some("replica-a"),
        "a refused acquire changes nothing"
    );
    // Leases are independent of each other.
    let other = lease();
    assert!(db.acquire_lease(&other, "replica-b", LONG).await.unwrap());
    assert_eq!(
        db.lease_holder(&name).await.unwrap().as_deref(),
        Some("replica-a")
    );
}

async fn the_holder_renews_its_lease(db: Db) {
    let name = lease();
    assert!(db.acquire_lease(&name, "replica-a", SHORT).await.unwrap());
    // Renewing before it expires keeps it valid beyond the first expiry.
    for _ in 0..3 {
        tokio::time::sleep(SHORT / 2).await;
        assert!(
            db.acquire_lease(&name, "replica-a", SHORT).await.unwrap(),
            "the holder renews"
        );
        assert!(
            !db.acquire_lease(&name, "replica-b", SHORT).await.unwrap(),
            "a renewed lease is still refused to others"
        );
    }
    // Renewing with a longer time to live extends it that far.
    assert!(db.acquire_lease(&name, "replica-a", LONG).await.unwrap());
    tokio::time::sleep(SHORT * 2).await;
    assert!(!db.acquire_lease(&name, "replica-b", LONG).await.unwrap());
    assert_eq!(
        db.lease_holder(&name).await.unwrap().as_deref(),
        Some("replica-a")
    );
}

async fn another_holder_takes_an_expired_lease_over(db: Db) {
    let name = lease();
    assert!(db.acquire_lease(&name, "replica-a", SHORT).await.unwrap());
    tokio::time::sleep(SHORT * 2).await;
    assert_eq!(
        db.lease_holder(&name).await.unwrap(),
        None,
        "an expired lease has no holder"
    );
    assert!(
        db.acquire_lease(&name, "replica-b", LONG).await.unwrap(),
        "an expired lease is taken over"
    );
    assert_eq!(
        db.lease_holder(&name).await.unwrap().as_deref(),
        Some("replica-b")
    );
    assert!(
        !db.acquire_lease(&name, "replica-a", LONG).await.unwrap(),
        "the old holder cannot renew a lease it lost"
    );
}

async fn a_released_lease_is_free_at_once(db: Db) {
    let name = lease();
    assert!(db.acquire_lease(&name, "replica-a", LONG).await.unwrap());
    assert!(db.release_lease(&name, "replica-a").await.unwrap());
    assert_eq!(db.lease_holder(&name).await.unwrap(), None);
    assert!(
        db.acquire_lease(&name, "replica-b", LONG).await.unwrap(),
        "another holder takes a released lease at once"
    );
    assert!(
        !db.release_lease(&name, "replica-a").await.unwrap(),
        "releasing a lease one no longer holds does nothing"
    );
    assert_eq!(
        db.lease_holder(&name).await.unwrap().as_deref(),
        Some("replica-b")
    );
    assert!(!db.release_lease(&lease(), "replica-a").await.unwrap());
}

async fn a_non_holder_cannot_release_a_lease(db: Db) {
    let name = lease();
    assert!(db.acquire_lease(&name, "replica-a", LONG).await.unwrap());
    assert!(!db.release_lease(&name, "replica-b").await.unwrap());
    assert_eq!(
        db.lease_holder(&name).await.unwrap().as_deref(),
        Some("replica-a")
    );
    assert!(!db.acquire_lease(&name, "replica-b", LONG).await.unwrap());
}

async fn one_of_many_concurrent_acquirers_gets_a_free_lease(db: Db) {
    for _ in 0..5 {
        let name = lease();
        let attempts = (0..8).map(|i| {
            let (db, name) = (db.clone(), name.clone());
            tokio::spawn(async move {
                db.acquire_lease(&name, &format!("replica-{i}"), LONG)
                    .await
                    .unwrap()
            })
        });
        let mut won = 0;
        for attempt in attempts.collect::<Vec<_>>() {
            won += usize::from(attempt.await.unwrap());
        }
        assert_eq!(won, 1, "exactly one holder");
    }
}

conformance_tests!(
    a_free_lease_is_taken_and_others_are_refused_while_it_is_valid,
    the_holder_renews_its_lease,
    another_holder_takes_an_expired_lease_over,
    a_released_lease_is_free_at_once,
    a_non_holder_cannot_release_a_lease,
    one_of_many_concurrent_acquirers_gets_a_free_lease,
);
