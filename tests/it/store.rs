//! The session-store conformance suite: written once, run against the
//! embedded store and a real redis-server (`store_tests!` instantiates every
//! case for each), plus Redis-only failure cases.

use std::collections::BTreeMap;
use std::time::Duration;

use twintoken::config::{Config, LoginMode, Overflow};
use twintoken::store::{
    BindOutcome, BindRequest, Limit, LoginOutcome, NewSession, SessionStore, Stats, StoreError, StoreSettings,
    VerifyOutcome, VerifyRequest,
};
use twintoken::time::UnixMs;
use twintoken::tokens::{Sid, UserId};

use crate::support::redis_server::{RedisCluster, RedisServer};

pub const T0: UnixMs = UnixMs(1_800_000_000_000);
pub const SEC: Duration = Duration::from_secs(1);
pub const MIN: Duration = Duration::from_secs(60);
pub const HOUR: Duration = Duration::from_secs(3600);

/// Settings from the default configuration (idle 2h, absolute 30d, renew
/// window 30m, rotate 1d, grace 30s, multi with 10 sessions).
pub fn settings() -> StoreSettings {
    StoreSettings::from_config(&Config::for_test())
}

/// Settings where rotation is due after an hour (before the 2h idle expiry).
pub fn rotating() -> StoreSettings {
    let mut st = settings();
    st.lifetimes.rotate_interval = HOUR;
    st
}

pub fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

pub fn sid(n: u8) -> Sid {
    Sid([n; 16])
}

pub fn new(u: &str, n: u8, device: Option<&str>) -> NewSession {
    NewSession {
        uid: uid(u),
        sid: sid(n),
        device: device.map(|d| twintoken::store::Device::new(d).unwrap()),
        meta: None,
    }
}

pub fn req(u: &str, n: u8, iat: UnixMs, login: UnixMs, candidate: u8) -> VerifyRequest {
    VerifyRequest {
        uid: uid(u),
        sid: sid(n),
        iat,
        login,
        candidate: sid(candidate),
        device: None,
    }
}

pub async fn created<S: SessionStore>(s: &S, n: &NewSession, now: UnixMs) -> Vec<Sid> {
    match s.login(n, now).await.unwrap() {
        LoginOutcome::Created { evicted, .. } => evicted,
        other => panic!("login refused: {other:?}"),
    }
}

pub fn sorted(mut v: Vec<Sid>) -> Vec<Sid> {
    v.sort();
    v
}

pub async fn live<S: SessionStore>(s: &S, u: &str, now: UnixMs) -> Vec<Sid> {
    s.list(&uid(u), now).await.unwrap().into_iter().map(|i| i.sid).collect()
}

/// Every case of the conformance suite, as a generic async fn over a store
/// built by `make(settings)`.
/// A binding of `u`'s session `n` (login `login`) to device key `key`,
/// continuing as `succ`.
pub fn bind_req(u: &str, n: u8, login: UnixMs, succ: u8, key: u8) -> BindRequest {
    BindRequest {
        uid: uid(u),
        sid: sid(n),
        login,
        successor: sid(succ),
        device: [key; 32],
    }
}

/// [`req`] presenting a proof of device key `key`.
pub fn req_proved(u: &str, n: u8, iat: UnixMs, login: UnixMs, candidate: u8, key: u8) -> VerifyRequest {
    VerifyRequest {
        device: Some([key; 32]),
        ..req(u, n, iat, login, candidate)
    }
}

pub mod cases {
    use super::*;

    /// A session that keeps rotating keeps only its newest rotated-away
    /// sids: older ones are forgotten (unknown), recent ones still raise
    /// the theft alarm.
    pub async fn rotated_sids_kept_for_theft_detection_are_bounded<S: SessionStore>(s: S) {
        created(&s, &new("zoe", 1, None), T0).await;
        let mut t = T0;
        for g in 1..=12u8 {
            t = t.plus(HOUR);
            let out = s.verify(&req("zoe", g, t.minus(HOUR), T0, g + 1), t).await.unwrap();
            assert!(
                matches!(out, VerifyOutcome::Rotated { successor, .. } if successor == sid(g + 1)),
                "generation {g}: {out:?}"
            );
            let out = s.verify(&req("zoe", g + 1, t, T0, 200), t.plus(SEC)).await.unwrap();
            assert!(matches!(out, VerifyOutcome::Valid { .. }), "generation {g}: {out:?}");
        }
        let later = t.plus(MIN);
        assert_eq!(
            s.verify(&req("zoe", 2, T0, T0, 201), later).await.unwrap(),
            VerifyOutcome::NotFound,
            "a sid more than 8 rotations old is forgotten"
        );
        assert!(
            matches!(
                s.verify(&req("zoe", 6, T0, T0, 202), later).await.unwrap(),
                VerifyOutcome::Theft { .. }
            ),
            "a recent rotated-away sid still detects theft"
        );
        assert!(live(&s, "zoe", later).await.is_empty(), "theft revoked the session");
    }

    pub async fn login_then_verify<S: SessionStore>(s: S) {
        created(&s, &new("alice", 1, None), T0).await;
        let t = T0.plus(MIN);
        assert_eq!(
            s.verify(&req("alice", 1, T0, T0, 99), t).await.unwrap(),
            VerifyOutcome::Valid {
                idle_expires: T0.plus(2 * HOUR)
            },
            "outside the renew window the idle expiry does not move"
        );
        assert_eq!(
            s.verify(&req("alice", 2, T0, T0, 99), t).await.unwrap(),
            VerifyOutcome::NotFound
        );
        assert_eq!(
            s.verify(&req("nobody", 1, T0, T0, 99), t).await.unwrap(),
            VerifyOutcome::NotFound
        );
    }

    pub async fn multi_mode_evicts_the_oldest_at_the_cap<S: SessionStore>(s: S) {
        for n in 1..=3 {
            assert!(
                created(&s, &new("bob", n, None), T0.plus(SEC * n as u32))
                    .await
                    .is_empty()
            );
        }
        let evicted = created(&s, &new("bob", 4, None), T0.plus(SEC * 4)).await;
        assert_eq!(evicted, vec![sid(1)], "the oldest login goes");
        assert_eq!(live(&s, "bob", T0.plus(SEC * 5)).await, vec![sid(2), sid(3), sid(4)]);
        assert_eq!(
            s.verify(&req("bob", 1, T0, T0, 99), T0.plus(SEC * 5)).await.unwrap(),
            VerifyOutcome::NotFound
        );
    }

    pub async fn multi_mode_reject_changes_nothing<S: SessionStore>(s: S) {
        for n in 1..=3 {
            created(&s, &new("carol", n, None), T0).await;
        }
        assert_eq!(
            s.login(&new("carol", 4, None), T0).await.unwrap(),
            LoginOutcome::Rejected(Limit::MaxSessions)
        );
        assert_eq!(live(&s, "carol", T0).await, vec![sid(1), sid(2), sid(3)]);
        assert_eq!(
            s.verify(&req("carol", 4, T0, T0, 99), T0).await.unwrap(),
            VerifyOutcome::NotFound
        );
    }

    pub async fn single_mode_revokes_the_other_sessions<S: SessionStore>(s: S) {
        created(&s, &new("dan", 1, None), T0).await;
        created(&s, &new("dan", 2, None), T0.plus(SEC)).await;
        let evicted = created(&s, &new("dan", 3, None), T0.plus(SEC * 2)).await;
        assert_eq!(
            sorted(evicted),
            vec![sid(2)],
            "single mode: the second login already evicted the first"
        );
        assert_eq!(live(&s, "dan", T0.plus(SEC * 3)).await, vec![sid(3)]);
    }

    pub async fn device_caps_evict_or_reject_per_device_type<S: SessionStore>(s: S, reject: bool) {
        created(&s, &new("erin", 1, Some("pc")), T0).await;
        created(&s, &new("erin", 2, Some("mobile")), T0.plus(SEC)).await;
        created(&s, &new("erin", 3, None), T0.plus(SEC * 2)).await;
        let r = s.login(&new("erin", 4, Some("pc")), T0.plus(SEC * 3)).await.unwrap();
        if reject {
            assert_eq!(r, LoginOutcome::Rejected(Limit::Device));
            assert_eq!(live(&s, "erin", T0.plus(SEC * 4)).await, vec![sid(1), sid(2), sid(3)]);
        } else {
            assert!(
                matches!(r, LoginOutcome::Created { ref evicted, .. } if *evicted == vec![sid(1)]),
                "{r:?}"
            );
            assert_eq!(live(&s, "erin", T0.plus(SEC * 4)).await, vec![sid(2), sid(3), sid(4)]);
        }
        // Other device types are untouched by the pc cap.
        let info = s.list(&uid("erin"), T0.plus(SEC * 4)).await.unwrap();
        assert_eq!(
            info.iter()
                .find(|i| i.sid == sid(2))
                .and_then(|i| i.device.clone())
                .as_deref(),
            Some("mobile")
        );
    }

    pub async fn idle_expiry_slides_inside_the_renew_window<S: SessionStore>(s: S) {
        created(&s, &new("fay", 1, None), T0).await;
        // 1h40m in: 20 minutes left, inside the 30-minute window: renewed.
        let t = T0.plus(HOUR + 40 * MIN);
        assert_eq!(
            s.verify(&req("fay", 1, T0, T0, 99), t).await.unwrap(),
            VerifyOutcome::Valid {
                idle_expires: t.plus(2 * HOUR)
            }
        );
        // Past the renewed expiry without a verify: expired, and gone.
        let late = t.plus(2 * HOUR);
        assert_eq!(
            s.verify(&req("fay", 1, T0, T0, 99), late).await.unwrap(),
            VerifyOutcome::Expired
        );
        assert_eq!(
            s.verify(&req("fay", 1, T0, T0, 99), late).await.unwrap(),
            VerifyOutcome::NotFound
        );
        assert!(live(&s, "fay", late).await.is_empty());
    }

    pub async fn absolute_lifetime_counts_from_login_and_caps_renewal<S: SessionStore>(s: S) {
        let login = T0;
        created(&s, &new("gus", 1, None), login).await;
        let deadline = login.plus(30 * 24 * HOUR);
        // Keep the session busy until 1h before the deadline: the renewal is
        // capped at the deadline, never past it.
        let mut t = login;
        let mut iat = login;
        let mut current = 1u8;
        let mut cand = 100u8;
        while t < deadline.minus(HOUR) {
            t = t.plus(HOUR + 45 * MIN);
            match s.verify(&req("gus", current, iat, login, cand), t).await.unwrap() {
                VerifyOutcome::Valid { idle_expires } => assert!(idle_expires <= deadline),
                VerifyOutcome::Rotated {
                    successor,
                    idle_expires,
                } => {
                    assert!(idle_expires <= deadline);
                    current = successor.0[0];
                    iat = t;
                    cand = cand.wrapping_add(1);
                }
                other => panic!("{other:?} at {t:?}"),
            }
        }
        assert_eq!(
            s.verify(&req("gus", current, iat, login, cand), deadline)
                .await
                .unwrap(),
            VerifyOutcome::Expired
        );
    }

    pub async fn rotation_hands_every_presenter_the_same_successor<S: SessionStore>(s: S) {
        created(&s, &new("hal", 1, None), T0).await;
        let due = T0.plus(HOUR + MIN);
        let first = s.verify(&req("hal", 1, T0, T0, 50), due).await.unwrap();
        let VerifyOutcome::Rotated { successor, .. } = first else {
            panic!("{first:?}")
        };
        assert_eq!(successor, sid(50));
        // A second presenter with another candidate gets the same successor.
        let again = s.verify(&req("hal", 1, T0, T0, 51), due.plus(SEC)).await.unwrap();
        assert!(
            matches!(again, VerifyOutcome::Rotated { successor: s2, .. } if s2 == sid(50)),
            "{again:?}"
        );
        // Until the successor is used, the old sid stays valid, however long
        // that takes (a lost response logs nobody out).
        let later = due.plus(20 * MIN);
        assert!(matches!(
            s.verify(&req("hal", 1, T0, T0, 52), later).await.unwrap(),
            VerifyOutcome::Rotated { .. }
        ));
        // The successor's first use starts the old sid's grace period.
        let used = later.plus(SEC);
        assert!(matches!(
            s.verify(&req("hal", 50, used, T0, 53), used).await.unwrap(),
            VerifyOutcome::Valid { .. }
        ));
        assert!(
            matches!(
                s.verify(&req("hal", 1, T0, T0, 54), used.plus(29 * SEC)).await.unwrap(),
                VerifyOutcome::Valid { .. }
            ),
            "in-flight requests with the old token pass during the grace"
        );
        // After the grace, the old token is treated as stolen: the whole
        // session goes, successor included.
        let theft = s.verify(&req("hal", 1, T0, T0, 55), used.plus(31 * SEC)).await.unwrap();
        let VerifyOutcome::Theft { revoked } = theft else {
            panic!("{theft:?}")
        };
        assert_eq!(sorted(revoked), vec![sid(1), sid(50)]);
        assert_eq!(
            s.verify(&req("hal", 50, used, T0, 56), used.plus(32 * SEC))
                .await
                .unwrap(),
            VerifyOutcome::NotFound
        );
        assert!(live(&s, "hal", used.plus(32 * SEC)).await.is_empty());
    }

    pub async fn rotated_session_lists_once_and_caps_count_sessions_not_sids<S: SessionStore>(s: S) {
        created(&s, &new("ivy", 1, None), T0).await;
        created(&s, &new("ivy", 2, None), T0.plus(SEC)).await;
        let due = T0.plus(HOUR + SEC);
        assert!(matches!(
            s.verify(&req("ivy", 1, T0, T0, 60), due).await.unwrap(),
            VerifyOutcome::Rotated { .. }
        ));
        assert_eq!(sorted(live(&s, "ivy", due).await), vec![sid(2), sid(60)]);
        assert_eq!(s.stats(due).await.unwrap(), Stats { users: 1, sessions: 2 });
        // Revoking by the old sid takes the successor too.
        assert_eq!(
            sorted(s.revoke(&uid("ivy"), &sid(1), due).await.unwrap()),
            vec![sid(1), sid(60)]
        );
        assert_eq!(live(&s, "ivy", due).await, vec![sid(2)]);
    }

    pub async fn revoke_one_and_all<S: SessionStore>(s: S) {
        for n in 1..=3 {
            created(&s, &new("jo", n, None), T0).await;
        }
        created(&s, &new("kim", 9, None), T0).await;
        assert_eq!(s.revoke(&uid("jo"), &sid(2), T0).await.unwrap(), vec![sid(2)]);
        assert!(
            s.revoke(&uid("jo"), &sid(2), T0).await.unwrap().is_empty(),
            "revoking twice is a no-op"
        );
        assert!(s.revoke(&uid("nobody"), &sid(2), T0).await.unwrap().is_empty());
        assert_eq!(
            s.verify(&req("jo", 2, T0, T0, 99), T0).await.unwrap(),
            VerifyOutcome::NotFound
        );
        assert_eq!(
            sorted(s.revoke_all(&uid("jo"), T0).await.unwrap()),
            vec![sid(1), sid(3)]
        );
        assert!(live(&s, "jo", T0).await.is_empty());
        assert_eq!(live(&s, "kim", T0).await, vec![sid(9)], "other users untouched");
    }

    pub async fn list_shows_live_sessions_with_their_metadata<S: SessionStore>(s: S) {
        let mut n = new("lee", 1, Some("pc"));
        n.meta = Some(r#"{"ip":"203.0.113.7","ua":"Firefox | 140"}"#.into());
        created(&s, &n, T0).await;
        created(&s, &new("lee", 2, None), T0.plus(HOUR)).await;
        let l = s.list(&uid("lee"), T0.plus(HOUR)).await.unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].sid, l[0].login, l[0].idle_expires),
            (sid(1), Some(T0), T0.plus(2 * HOUR)),
            "least recently active first"
        );
        assert_eq!(l[0].device.as_deref(), Some("pc"));
        assert_eq!(l[0].meta, n.meta, "metadata round-trips, separators included");
        assert_eq!((l[1].device.clone(), l[1].meta.clone()), (None, None));
        assert_eq!(
            l[1].login, None,
            "a plain session is one sorted-set member: its login time is only in its token"
        );
        // Two hours after the first login it has expired: listing prunes it.
        assert_eq!(live(&s, "lee", T0.plus(2 * HOUR)).await, vec![sid(2)]);
    }

    /// Regression (issue 12, drift): a rotation candidate that collides
    /// with an existing sid overwrote that session's record in Lua and was
    /// skipped by the embedded store. Both skip it now: no rotation this
    /// time, the other session untouched.
    pub async fn a_rotation_candidate_that_exists_is_not_used<S: SessionStore>(s: S) {
        created(&s, &new("una", 1, None), T0).await;
        let mut other = new("una", 2, Some("pc"));
        other.meta = Some("m".into());
        created(&s, &other, T0).await;
        let now = T0.plus(HOUR);
        assert!(matches!(
            s.verify(&req("una", 1, T0, T0, 2), now).await.unwrap(),
            VerifyOutcome::Valid { .. }
        ));
        let l = s.list(&uid("una"), now).await.unwrap();
        let two = l.iter().find(|i| i.sid == sid(2)).unwrap();
        assert_eq!((two.device.as_deref(), two.meta.as_deref()), (Some("pc"), Some("m")));
        // The next verify with a free candidate rotates as usual.
        assert!(matches!(
            s.verify(&req("una", 1, T0, T0, 77), now).await.unwrap(),
            VerifyOutcome::Rotated { successor, .. } if successor == sid(77)
        ));
    }

    pub async fn expired_members_are_pruned_by_the_next_login<S: SessionStore>(s: S) {
        for n in 1..=3 {
            created(&s, &new("max", n, None), T0).await;
        }
        let later = T0.plus(3 * HOUR);
        let evicted = created(&s, &new("max", 4, None), later).await;
        assert!(evicted.is_empty(), "expired sessions are pruned, not evicted");
        assert_eq!(live(&s, "max", later).await, vec![sid(4)]);
    }

    pub async fn online_statistics<S: SessionStore>(s: S) {
        assert_eq!(s.stats(T0).await.unwrap(), Stats::default());
        created(&s, &new("u1", 1, None), T0).await;
        created(&s, &new("u1", 2, None), T0).await;
        created(&s, &new("u2", 3, None), T0.plus(HOUR)).await;
        assert_eq!(s.stats(T0.plus(HOUR)).await.unwrap(), Stats { users: 2, sessions: 3 });
        assert_eq!(
            s.stats(T0.plus(2 * HOUR)).await.unwrap(),
            Stats { users: 1, sessions: 1 }
        );
    }

    /// Device-bound sessions: binding moves the session to a new sid bound
    /// to the key; the old sid (what an unbound copy of the long token
    /// names) is gone with its lineage; the bound sid answers only to a
    /// proof of that key, keeps its login time, device and metadata, is
    /// listed as bound, rotates with its binding, and binds once.
    pub async fn binding_a_session_to_a_device_key<S: SessionStore>(s: S) {
        let mut n = new("bea", 1, Some("pc"));
        n.meta = Some("{\"ip\":\"::1\"}".into());
        created(&s, &n, T0).await;
        created(&s, &new("bea", 2, None), T0).await;
        let t = T0.plus(MIN);
        // Rotate session 1 first: its lineage (1 -> 3) must end with it.
        let due = T0.plus(HOUR + MIN);
        assert!(matches!(
            s.verify(&req("bea", 1, T0, T0, 3), due).await.unwrap(),
            VerifyOutcome::Rotated { .. }
        ));
        assert!(matches!(
            s.verify(&req("bea", 3, due, T0, 90), due.plus(SEC)).await.unwrap(),
            VerifyOutcome::Valid { .. }
        ));
        let t2 = due.plus(2 * SEC);
        assert_eq!(
            s.bind(&bind_req("bea", 1, T0, 10, 7), t2).await.unwrap(),
            BindOutcome::NotFound,
            "a rotated-away sid cannot bind: the current token must"
        );
        let out = s.bind(&bind_req("bea", 3, T0, 10, 7), t2).await.unwrap();
        let BindOutcome::Bound {
            idle_expires,
            mut ended,
        } = out
        else {
            panic!("{out:?}")
        };
        ended.sort();
        assert_eq!(ended, vec![sid(1), sid(3)], "the old sid and its lineage end");
        assert_eq!(idle_expires, t2.plus(2 * HOUR));
        for old in [1, 3] {
            assert_eq!(
                s.verify(&req("bea", old, due, T0, 91), t2.plus(SEC)).await.unwrap(),
                VerifyOutcome::NotFound,
                "an unbound copy of the long token names a sid that is gone"
            );
        }
        assert_eq!(
            s.verify(&req("bea", 10, t2, T0, 92), t2.plus(SEC)).await.unwrap(),
            VerifyOutcome::KeyMismatch,
            "the bound sid without a proof"
        );
        assert_eq!(
            s.verify(&req_proved("bea", 10, t2, T0, 92, 8), t2.plus(SEC))
                .await
                .unwrap(),
            VerifyOutcome::KeyMismatch,
            "the bound sid with another key's proof"
        );
        assert_eq!(
            s.verify(&req_proved("bea", 10, t2, T0, 92, 7), t2.plus(SEC))
                .await
                .unwrap(),
            VerifyOutcome::Valid { idle_expires },
            "the bound sid with its key's proof"
        );
        assert_eq!(
            s.verify(&req_proved("bea", 2, T0, T0, 93, 7), t2.plus(SEC))
                .await
                .unwrap(),
            VerifyOutcome::KeyMismatch,
            "an unbound session with a bound token's proof"
        );
        assert_eq!(
            s.bind(&bind_req("bea", 10, T0, 11, 8), t2.plus(SEC)).await.unwrap(),
            BindOutcome::AlreadyBound,
            "a bound session cannot be bound again, to another key or its own"
        );
        assert_eq!(
            s.bind(&bind_req("bea", 10, T0, 11, 7), t2.plus(SEC)).await.unwrap(),
            BindOutcome::AlreadyBound
        );
        let list = s.list(&uid("bea"), t2.plus(SEC)).await.unwrap();
        let bound: Vec<_> = list.iter().map(|i| (i.sid, i.bound)).collect();
        assert!(
            bound.contains(&(sid(10), true)) && bound.contains(&(sid(2), false)),
            "{list:?}"
        );
        let b = list.iter().find(|i| i.sid == sid(10)).unwrap();
        assert_eq!(b.login, Some(T0), "the bound session keeps its login time");
        assert_eq!(b.device.as_deref(), Some("pc"));
        assert_eq!(b.meta.as_deref(), Some("{\"ip\":\"::1\"}"));
        // Rotation keeps the binding.
        let due2 = t2.plus(HOUR + MIN);
        let out = s.verify(&req_proved("bea", 10, t2, T0, 12, 7), due2).await.unwrap();
        assert!(
            matches!(out, VerifyOutcome::Rotated { successor, .. } if successor == sid(12)),
            "{out:?}"
        );
        assert_eq!(
            s.verify(&req("bea", 12, due2, T0, 94), due2.plus(SEC)).await.unwrap(),
            VerifyOutcome::KeyMismatch,
            "the successor is bound too"
        );
        assert!(matches!(
            s.verify(&req_proved("bea", 12, due2, T0, 94, 7), due2.plus(SEC))
                .await
                .unwrap(),
            VerifyOutcome::Valid { .. }
        ));
        // Unknown, expired, and revoked sessions do not bind.
        assert_eq!(
            s.bind(&bind_req("bea", 99, T0, 13, 7), t).await.unwrap(),
            BindOutcome::NotFound
        );
        assert_eq!(
            s.bind(&bind_req("bea", 2, T0, 13, 7), T0.plus(3 * HOUR)).await.unwrap(),
            BindOutcome::Expired
        );
        assert_eq!(s.revoke(&uid("bea"), &sid(12), due2.plus(SEC)).await.unwrap().len(), 2);
        assert_eq!(
            s.verify(&req_proved("bea", 12, due2, T0, 95, 7), due2.plus(2 * SEC))
                .await
                .unwrap(),
            VerifyOutcome::NotFound,
            "revoking a bound session removes it"
        );
    }

    /// A plain session (no record) binds with the login time its token
    /// carries.
    pub async fn a_plain_session_binds_with_its_tokens_login_time<S: SessionStore>(s: S) {
        created(&s, &new("pia", 1, None), T0).await;
        let t = T0.plus(MIN);
        let out = s.bind(&bind_req("pia", 1, T0, 2, 5), t).await.unwrap();
        assert_eq!(
            out,
            BindOutcome::Bound {
                idle_expires: t.plus(2 * HOUR),
                ended: vec![sid(1)]
            }
        );
        let list = s.list(&uid("pia"), t).await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].sid, list[0].login, list[0].bound), (sid(2), Some(T0), true));
    }

    pub async fn concurrent_verifies_of_a_token_due_for_rotation_yield_one_successor<S>(s: S)
    where
        S: SessionStore + Send + Sync + 'static,
    {
        created(&s, &new("ned", 1, None), T0).await;
        let s = std::sync::Arc::new(s);
        let due = T0.plus(HOUR + SEC);
        let tasks: Vec<_> = (0..50u8)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.verify(&req("ned", 1, T0, T0, 100 + i), due).await })
            })
            .collect();
        let mut successors = std::collections::BTreeSet::new();
        for t in tasks {
            match t.await.unwrap().unwrap() {
                VerifyOutcome::Rotated { successor, .. } => {
                    successors.insert(successor);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(successors.len(), 1, "exactly one successor: {successors:?}");
        assert_eq!(sorted(live(&*s, "ned", due).await).len(), 1);
    }
}

pub fn with_login(mode: LoginMode, max: u32, overflow: Overflow, devices: &[(&str, u32)]) -> StoreSettings {
    let mut st = settings();
    st.login.mode = mode;
    st.login.max_sessions = max;
    st.login.overflow = overflow;
    st.login.devices = devices
        .iter()
        .map(|(d, n)| (d.to_string(), *n))
        .collect::<BTreeMap<_, _>>();
    st
}

/// Instantiates every conformance case for one store kind. `$make` is an
/// async fn(StoreSettings) -> (store, guard): the guard keeps whatever the
/// store needs (a redis-server) alive for the test.
/// The one-time-code half of the conformance suite (`lua/code_*.lua` and
/// the memory store's mirror of them).
pub mod code_cases {
    use super::*;
    use twintoken::store::codes::{CheckOutcome, CodeLimits, CodeStore, Digest, SendOutcome};
    use twintoken::tokens::Kid;

    pub fn limits() -> CodeLimits {
        CodeLimits {
            ttl: 2 * MIN,
            max_attempts: 5,
            resend_interval: MIN,
            daily_limit: 10,
        }
    }

    const TAG: &str = "0123456789abcdef0123456789abcdef";
    const RIGHT: Digest = [7; 32];
    const WRONG: Digest = [8; 32];

    fn k1(d: Digest) -> Vec<(Kid, Digest)> {
        vec![(Kid(1), d)]
    }

    pub async fn resend_wait_and_daily_limit<S: CodeStore>(s: S) {
        let l = limits();
        assert_eq!(
            s.code_send(TAG, Kid(1), &RIGHT, &l, T0).await.unwrap(),
            SendOutcome::Stored
        );
        assert_eq!(
            s.code_send(TAG, Kid(1), &RIGHT, &l, T0.plus(20 * SEC)).await.unwrap(),
            SendOutcome::TooSoon(40 * SEC),
            "the wait is what is left of the resend interval"
        );
        assert_eq!(
            s.code_send(
                "ffffffffffffffffffffffffffffffff",
                Kid(1),
                &RIGHT,
                &l,
                T0.plus(20 * SEC)
            )
            .await
            .unwrap(),
            SendOutcome::Stored,
            "limits are per destination"
        );
        // Nine more, a minute apart: ten in the day window.
        for i in 1..10u32 {
            let at = T0.plus(MIN * i);
            assert_eq!(
                s.code_send(TAG, Kid(1), &RIGHT, &l, at).await.unwrap(),
                SendOutcome::Stored,
                "send {i}"
            );
        }
        let at = T0.plus(MIN * 10);
        assert_eq!(
            s.code_send(TAG, Kid(1), &RIGHT, &l, at).await.unwrap(),
            SendOutcome::DailyLimit(Duration::from_secs(24 * 3600) - MIN * 10),
            "the eleventh send in the day window waits for its end"
        );
        let next_day = T0.plus(Duration::from_secs(24 * 3600));
        assert_eq!(
            s.code_send(TAG, Kid(1), &RIGHT, &l, next_day).await.unwrap(),
            SendOutcome::Stored
        );
    }

    pub async fn work_once_and_burn_after_max_attempts<S: CodeStore>(s: S) {
        let l = limits();
        s.code_send(TAG, Kid(1), &RIGHT, &l, T0).await.unwrap();
        assert_eq!(
            s.code_check(TAG, &k1(WRONG), T0.plus(SEC)).await.unwrap(),
            CheckOutcome::Wrong { attempts_left: 4 }
        );
        assert_eq!(
            s.code_check(TAG, &k1(RIGHT), T0.plus(SEC)).await.unwrap(),
            CheckOutcome::Accepted
        );
        assert_eq!(
            s.code_check(TAG, &k1(RIGHT), T0.plus(SEC)).await.unwrap(),
            CheckOutcome::Missing,
            "a code works once"
        );

        s.code_send(TAG, Kid(1), &RIGHT, &l, T0.plus(2 * MIN)).await.unwrap();
        for left in (0..5).rev() {
            assert_eq!(
                s.code_check(TAG, &k1(WRONG), T0.plus(2 * MIN)).await.unwrap(),
                CheckOutcome::Wrong { attempts_left: left }
            );
        }
        assert_eq!(
            s.code_check(TAG, &k1(RIGHT), T0.plus(2 * MIN)).await.unwrap(),
            CheckOutcome::Missing,
            "five wrong guesses burn the code: the right one no longer works"
        );
        assert_eq!(
            s.code_check("00000000000000000000000000000000", &k1(RIGHT), T0)
                .await
                .unwrap(),
            CheckOutcome::Missing
        );
    }

    pub async fn expire_and_are_replaced_by_a_resend<S: CodeStore>(s: S) {
        let l = limits();
        s.code_send(TAG, Kid(1), &RIGHT, &l, T0).await.unwrap();
        assert_eq!(
            s.code_check(TAG, &k1(RIGHT), T0.plus(2 * MIN)).await.unwrap(),
            CheckOutcome::Missing,
            "a code stops working at its ttl"
        );
        s.code_send(TAG, Kid(1), &RIGHT, &l, T0.plus(3 * MIN)).await.unwrap();
        s.code_send(TAG, Kid(1), &WRONG, &l, T0.plus(4 * MIN)).await.unwrap();
        assert_eq!(
            s.code_check(TAG, &k1(RIGHT), T0.plus(4 * MIN)).await.unwrap(),
            CheckOutcome::Wrong { attempts_left: 4 },
            "a resend replaces the earlier code"
        );
        assert_eq!(
            s.code_check(TAG, &k1(WRONG), T0.plus(4 * MIN)).await.unwrap(),
            CheckOutcome::Accepted
        );
    }

    pub async fn checked_under_their_own_kid<S: CodeStore>(s: S) {
        let l = limits();
        s.code_send(TAG, Kid(1), &RIGHT, &l, T0).await.unwrap();
        assert_eq!(
            s.code_check(TAG, &[(Kid(2), RIGHT)], T0).await.unwrap(),
            CheckOutcome::Wrong { attempts_left: 4 },
            "a digest under another key does not count"
        );
        assert_eq!(
            s.code_check(TAG, &[(Kid(2), WRONG), (Kid(1), RIGHT)], T0)
                .await
                .unwrap(),
            CheckOutcome::Accepted,
            "after a rotation the candidate under the code's own key is used"
        );
    }

    pub async fn cancel_lifts_the_wait_but_counts_for_the_day<S: CodeStore>(s: S) {
        let l = CodeLimits {
            daily_limit: 2,
            ..limits()
        };
        s.code_send(TAG, Kid(1), &RIGHT, &l, T0).await.unwrap();
        assert!(
            !s.code_cancel(TAG, &WRONG, T0).await.unwrap(),
            "another code is not withdrawn"
        );
        assert!(s.code_cancel(TAG, &RIGHT, T0).await.unwrap());
        assert_eq!(s.code_check(TAG, &k1(RIGHT), T0).await.unwrap(), CheckOutcome::Missing);
        assert_eq!(
            s.code_send(TAG, Kid(1), &RIGHT, &l, T0.plus(SEC)).await.unwrap(),
            SendOutcome::Stored,
            "a failed delivery does not make the user wait"
        );
        assert!(matches!(
            s.code_send(TAG, Kid(1), &RIGHT, &l, T0.plus(2 * MIN)).await.unwrap(),
            SendOutcome::DailyLimit(_)
        ));
    }

    /// Regression (issue 12, drift): cancelling after the code's expiry
    /// answered differently in the two stores (the embedded store's sweep
    /// decided). An expired code is gone: nothing to withdraw.
    pub async fn an_expired_code_cannot_be_cancelled<S: CodeStore>(s: S) {
        s.code_send(TAG, Kid(1), &RIGHT, &limits(), T0).await.unwrap();
        let after = T0.plus(limits().ttl).plus(SEC);
        assert!(!s.code_cancel(TAG, &RIGHT, after).await.unwrap());
        assert_eq!(
            s.code_check(TAG, &k1(RIGHT), after).await.unwrap(),
            CheckOutcome::Missing
        );
    }
}

macro_rules! store_tests {
    ($kind:ident, $make:path) => {
        mod $kind {
            use twintoken::config::{LoginMode, Overflow};

            use crate::store::{cases, rotating, settings, with_login};

            #[tokio::test]
            async fn binding_a_session_to_a_device_key() {
                let (s, _g) = $make(rotating()).await;
                cases::binding_a_session_to_a_device_key(s).await;
            }
            #[tokio::test]
            async fn a_plain_session_binds_with_its_tokens_login_time() {
                let (s, _g) = $make(settings()).await;
                cases::a_plain_session_binds_with_its_tokens_login_time(s).await;
            }
            #[tokio::test]
            async fn login_then_verify() {
                let (s, _g) = $make(settings()).await;
                cases::login_then_verify(s).await;
            }
            #[tokio::test]
            async fn multi_mode_evicts_the_oldest_at_the_cap() {
                let (s, _g) = $make(with_login(LoginMode::Multi, 3, Overflow::EvictOldest, &[])).await;
                cases::multi_mode_evicts_the_oldest_at_the_cap(s).await;
            }
            #[tokio::test]
            async fn multi_mode_reject_changes_nothing() {
                let (s, _g) = $make(with_login(LoginMode::Multi, 3, Overflow::Reject, &[])).await;
                cases::multi_mode_reject_changes_nothing(s).await;
            }
            #[tokio::test]
            async fn single_mode_revokes_the_other_sessions() {
                let (s, _g) = $make(with_login(LoginMode::Single, 10, Overflow::EvictOldest, &[])).await;
                cases::single_mode_revokes_the_other_sessions(s).await;
            }
            #[tokio::test]
            async fn device_caps_evict_the_oldest_of_that_type() {
                let (s, _g) = $make(with_login(
                    LoginMode::Multi,
                    10,
                    Overflow::EvictOldest,
                    &[("pc", 1), ("mobile", 1)],
                ))
                .await;
                cases::device_caps_evict_or_reject_per_device_type(s, false).await;
            }
            #[tokio::test]
            async fn device_caps_reject() {
                let (s, _g) = $make(with_login(
                    LoginMode::Multi,
                    10,
                    Overflow::Reject,
                    &[("pc", 1), ("mobile", 1)],
                ))
                .await;
                cases::device_caps_evict_or_reject_per_device_type(s, true).await;
            }
            #[tokio::test]
            async fn idle_expiry_slides_inside_the_renew_window() {
                let (s, _g) = $make(settings()).await;
                cases::idle_expiry_slides_inside_the_renew_window(s).await;
            }
            #[tokio::test]
            async fn absolute_lifetime_counts_from_login_and_caps_renewal() {
                let (s, _g) = $make(settings()).await;
                cases::absolute_lifetime_counts_from_login_and_caps_renewal(s).await;
            }
            #[tokio::test]
            async fn rotation_hands_every_presenter_the_same_successor() {
                let (s, _g) = $make(rotating()).await;
                cases::rotation_hands_every_presenter_the_same_successor(s).await;
            }
            #[tokio::test]
            async fn rotated_session_lists_once() {
                let (s, _g) = $make(rotating()).await;
                cases::rotated_session_lists_once_and_caps_count_sessions_not_sids(s).await;
            }
            #[tokio::test]
            async fn rotated_sids_kept_for_theft_detection_are_bounded() {
                let (s, _g) = $make(rotating()).await;
                cases::rotated_sids_kept_for_theft_detection_are_bounded(s).await;
            }
            #[tokio::test]
            async fn revoke_one_and_all() {
                let (s, _g) = $make(settings()).await;
                cases::revoke_one_and_all(s).await;
            }
            #[tokio::test]
            async fn list_shows_live_sessions_with_their_metadata() {
                let (s, _g) = $make(settings()).await;
                cases::list_shows_live_sessions_with_their_metadata(s).await;
            }
            #[tokio::test]
            async fn expired_members_are_pruned_by_the_next_login() {
                let (s, _g) = $make(with_login(LoginMode::Multi, 3, Overflow::EvictOldest, &[])).await;
                cases::expired_members_are_pruned_by_the_next_login(s).await;
            }
            #[tokio::test]
            async fn online_statistics() {
                let (s, _g) = $make(settings()).await;
                cases::online_statistics(s).await;
            }
            #[tokio::test]
            async fn codes_respect_resend_wait_and_daily_limit() {
                let (s, _g) = $make(settings()).await;
                crate::store::code_cases::resend_wait_and_daily_limit(s).await;
            }
            #[tokio::test]
            async fn codes_work_once_and_burn_after_max_attempts() {
                let (s, _g) = $make(settings()).await;
                crate::store::code_cases::work_once_and_burn_after_max_attempts(s).await;
            }
            #[tokio::test]
            async fn codes_expire_and_are_replaced_by_a_resend() {
                let (s, _g) = $make(settings()).await;
                crate::store::code_cases::expire_and_are_replaced_by_a_resend(s).await;
            }
            #[tokio::test]
            async fn codes_are_checked_under_their_own_kid() {
                let (s, _g) = $make(settings()).await;
                crate::store::code_cases::checked_under_their_own_kid(s).await;
            }
            #[tokio::test]
            async fn cancelled_codes_lift_the_wait_but_count_for_the_day() {
                let (s, _g) = $make(settings()).await;
                crate::store::code_cases::cancel_lifts_the_wait_but_counts_for_the_day(s).await;
            }
            #[tokio::test]
            async fn an_expired_code_cannot_be_cancelled() {
                let (s, _g) = $make(settings()).await;
                crate::store::code_cases::an_expired_code_cannot_be_cancelled(s).await;
            }
            #[tokio::test]
            async fn a_rotation_candidate_that_exists_is_not_used() {
                let (s, _g) = $make(rotating()).await;
                cases::a_rotation_candidate_that_exists_is_not_used(s).await;
            }
            #[tokio::test]
            async fn throttle_counts_up_to_the_limit_within_a_window() {
                let (s, _g) = $make(settings()).await;
                crate::store::throttle_cases::counts_up_to_the_limit_within_a_window(s).await;
            }
            #[tokio::test]
            async fn throttle_reduces_an_account_under_attack_to_its_floor() {
                let (s, _g) = $make(settings()).await;
                crate::store::throttle_cases::reduces_an_account_under_attack_to_its_floor(s).await;
            }
            #[tokio::test]
            async fn bans_refuse_logins_until_they_end_and_can_be_lifted() {
                let (s, _g) = $make(settings()).await;
                crate::store::ban_cases::bans_refuse_logins_until_they_end_and_can_be_lifted(s).await;
            }
            #[tokio::test]
            async fn throttle_release_gives_back_and_clears() {
                let (s, _g) = $make(settings()).await;
                crate::store::throttle_cases::release_gives_back_and_clears(s).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_verifies_yield_one_successor() {
                let (s, _g) = $make(rotating()).await;
                cases::concurrent_verifies_of_a_token_due_for_rotation_yield_one_successor(s).await;
            }
        }
    };
}

/// Timed bans (`store::bans`, the ban check in `lua/login.lua`).
pub mod ban_cases {
    use twintoken::store::bans::{Ban, BanStore};
    use twintoken::store::{LoginOutcome, SessionStore};

    use super::{HOUR, MIN, T0, created, new, uid};

    pub async fn bans_refuse_logins_until_they_end_and_can_be_lifted<S: SessionStore + BanStore>(s: S) {
        let until = T0.plus(HOUR);
        let ban = Ban {
            until,
            reason: "chargeback | fraud".into(),
        };
        assert_eq!(s.ban_get(&uid("bea"), T0).await.unwrap(), None);
        s.ban_set(&uid("bea"), &ban, T0).await.unwrap();
        assert_eq!(s.ban_get(&uid("bea"), T0).await.unwrap(), Some(ban.clone()));
        assert_eq!(
            s.login(&new("bea", 1, None), T0.plus(MIN)).await.unwrap(),
            LoginOutcome::Banned { until }
        );
        // Nothing was created by the refused login; other users log in.
        assert!(s.list(&uid("bea"), T0.plus(MIN)).await.unwrap().is_empty());
        created(&s, &new("cal", 2, None), T0.plus(MIN)).await;
        // The ban ends by itself.
        assert_eq!(s.ban_get(&uid("bea"), until).await.unwrap(), None);
        created(&s, &new("bea", 3, None), until).await;
        // A new ban, lifted early; lifting twice says so.
        s.ban_set(
            &uid("bea"),
            &Ban {
                until: until.plus(HOUR),
                reason: String::new(),
            },
            until,
        )
        .await
        .unwrap();
        assert!(matches!(
            s.login(&new("bea", 4, None), until).await.unwrap(),
            LoginOutcome::Banned { .. }
        ));
        assert!(s.ban_lift(&uid("bea"), until).await.unwrap());
        assert!(!s.ban_lift(&uid("bea"), until).await.unwrap());
        created(&s, &new("bea", 5, None), until).await;
    }
}

/// The throttle counters (`lua/throttle_*.lua` and `LocalCounters`).
pub mod throttle_cases {
    use std::time::Duration;

    use twintoken::store::throttle::{Admit, AdmitLimits, Counter, ThrottleStore};
    use twintoken::time::UnixMs;

    const T0: UnixMs = UnixMs(1_700_000_000_000);

    fn limits(limit: u32) -> AdmitLimits {
        AdmitLimits {
            window: Duration::from_secs(300),
            limit,
            reduced: limit,
            threshold: u32::MAX,
        }
    }

    fn allowed(a: Admit) -> bool {
        matches!(a, Admit::Allowed { .. })
    }

    pub async fn counts_up_to_the_limit_within_a_window(s: impl ThrottleStore) {
        let c = Counter::AddressFailures("192.0.2.1");
        for i in 0..3 {
            let a = s
                .throttle_admit(c, &limits(3), T0.plus(Duration::from_secs(i)))
                .await
                .unwrap();
            assert!(allowed(a), "attempt {i}");
        }
        let a = s
            .throttle_admit(c, &limits(3), T0.plus(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(
            a,
            Admit::Refused {
                retry_after: Duration::from_secs(290),
                under_attack: false
            },
            "the window started with the first attempt"
        );
        // Refused attempts are not counted: the window still ends at T0+300 s.
        let a = s
            .throttle_admit(c, &limits(3), T0.plus(Duration::from_secs(299)))
            .await
            .unwrap();
        assert!(!allowed(a));
        let a = s
            .throttle_admit(c, &limits(3), T0.plus(Duration::from_secs(300)))
            .await
            .unwrap();
        assert!(allowed(a), "a new window");
        // Other counters are untouched.
        let other = Counter::AddressSends("192.0.2.1");
        assert!(allowed(s.throttle_admit(other, &limits(1), T0).await.unwrap()));
    }

    pub async fn reduces_an_account_under_attack_to_its_floor(s: impl ThrottleStore) {
        let l = AdmitLimits {
            window: Duration::from_secs(300),
            limit: 5,
            reduced: 1,
            threshold: 10,
        };
        fn from(bucket: &str) -> Counter<'_> {
            Counter::Account {
                account: "u:alice",
                bucket,
            }
        }
        for i in 0..10u32 {
            let bucket = format!("198.51.100.{i}");
            let a = s.throttle_admit(from(&bucket), &l, T0).await.unwrap();
            assert_eq!(a, Admit::Allowed { under_attack: false }, "{i}");
        }
        // Ten failures in all: each address now gets one try, a fresh one too.
        let a = s.throttle_admit(from("203.0.113.1"), &l, T0).await.unwrap();
        assert_eq!(a, Admit::Allowed { under_attack: true });
        let a = s.throttle_admit(from("203.0.113.1"), &l, T0).await.unwrap();
        assert!(matches!(a, Admit::Refused { under_attack: true, .. }), "{a:?}");
        let a = s.throttle_admit(from("203.0.113.2"), &l, T0).await.unwrap();
        assert_eq!(a, Admit::Allowed { under_attack: true }, "never locked out");
        // Another account is not affected.
        let bob = Counter::Account {
            account: "u:bob",
            bucket: "203.0.113.1",
        };
        assert_eq!(
            s.throttle_admit(bob, &l, T0).await.unwrap(),
            Admit::Allowed { under_attack: false }
        );
    }

    pub async fn release_gives_back_and_clears(s: impl ThrottleStore) {
        let c = Counter::Account {
            account: "d:tag",
            bucket: "192.0.2.9",
        };
        let l = AdmitLimits {
            window: Duration::from_secs(300),
            limit: 2,
            reduced: 2,
            threshold: 3,
        };
        assert!(allowed(s.throttle_admit(c, &l, T0).await.unwrap()));
        assert!(allowed(s.throttle_admit(c, &l, T0).await.unwrap()));
        assert!(!allowed(s.throttle_admit(c, &l, T0).await.unwrap()));
        // Clearing deletes this address's count and gives one back to the
        // account's total (2 -> 1): two more tries, and the account is not
        // under attack until its total reaches 3.
        s.throttle_release(c, true, T0).await.unwrap();
        assert_eq!(
            s.throttle_admit(c, &l, T0).await.unwrap(),
            Admit::Allowed { under_attack: false }
        );
        assert_eq!(
            s.throttle_admit(c, &l, T0).await.unwrap(),
            Admit::Allowed { under_attack: false }
        );
        assert!(!allowed(s.throttle_admit(c, &l, T0).await.unwrap()));
        // Giving back without clearing: one more try.
        let a = Counter::AddressFailures("192.0.2.9");
        assert!(allowed(s.throttle_admit(a, &limits(1), T0).await.unwrap()));
        assert!(!allowed(s.throttle_admit(a, &limits(1), T0).await.unwrap()));
        s.throttle_release(a, false, T0).await.unwrap();
        assert!(allowed(s.throttle_admit(a, &limits(1), T0).await.unwrap()));
        // Nothing to give back after the window: a no-op.
        s.throttle_release(a, false, T0.plus(Duration::from_secs(301)))
            .await
            .unwrap();
        assert!(allowed(
            s.throttle_admit(a, &limits(1), T0.plus(Duration::from_secs(301)))
                .await
                .unwrap()
        ));
    }
}

pub async fn make_memory(st: StoreSettings) -> (twintoken::store::memory::MemoryStore, ()) {
    (twintoken::store::memory::MemoryStore::new(st), ())
}

/// The embedded store kept on disk (every change fsynced): the same suite
/// holds with persistence on.
pub async fn make_memory_on_disk(st: StoreSettings) -> (twintoken::store::memory::MemoryStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let o = twintoken::store::memory::persist::PersistOptions::new(dir.path(), twintoken::config::Fsync::Always);
    (twintoken::store::memory::MemoryStore::open(st, &o).unwrap(), dir)
}

pub async fn make_redis(st: StoreSettings) -> (twintoken::store::redis::RedisStore, RedisServer) {
    let server = RedisServer::start();
    let s = twintoken::store::redis::RedisStore::connect(&[server.url().into()], "tt:", Duration::from_millis(500), st)
        .await
        .unwrap();
    (s, server)
}

pub async fn make_cluster(st: StoreSettings) -> (twintoken::store::redis::RedisStore, RedisCluster) {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let s = twintoken::store::redis::RedisStore::connect(
        &cluster.urls().into_iter().map(Into::into).collect::<Vec<_>>(),
        "tt:",
        Duration::from_millis(2000),
        st,
    )
    .await
    .unwrap();
    (s, cluster)
}

store_tests!(memory, crate::store::make_memory);
store_tests!(memory_on_disk, crate::store::make_memory_on_disk);
store_tests!(redis, crate::store::make_redis);
store_tests!(cluster, crate::store::make_cluster);

// Redis-only failure cases: the store meets a Redis that errs or stalls.

#[tokio::test]
async fn redis_errors_and_malformed_records_are_typed_and_leave_no_partial_state() {
    let (s, server) = make_redis(settings()).await;
    let mut c = server.conn();
    // The user's key is the wrong type: every script refuses it with a clear
    // error reply (TTBAD) before writing anything.
    let _: () = ::redis::cmd("SET")
        .arg("tt:{olga}")
        .arg("not a session set")
        .query(&mut c)
        .unwrap();
    let e = s.login(&new("olga", 1, None), T0).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Malformed(m) if m.contains("tt:{olga} holds a string")) && !e.is_unavailable(),
        "a key of the wrong type is this request's error, not an outage: {e:?}"
    );
    for e in [
        s.verify(&req("olga", 1, T0, T0, 99), T0).await.unwrap_err(),
        s.list(&uid("olga"), T0).await.unwrap_err(),
        s.revoke(&uid("olga"), &sid(1), T0).await.unwrap_err(),
        s.revoke_all(&uid("olga"), T0).await.unwrap_err(),
    ] {
        assert!(matches!(e, StoreError::Malformed(_)), "{e:?}");
    }
    let v: String = ::redis::cmd("GET").arg("tt:{olga}").query(&mut c).unwrap();
    assert_eq!(v, "not a session set", "no half-written session");
    let n: i64 = ::redis::cmd("EXISTS").arg("tt:{olga}:r").query(&mut c).unwrap();
    assert_eq!(n, 0);

    // A companion record that was mangled is reported as malformed data,
    // and the verify changes nothing.
    let mut d = new("pat", 1, Some("pc"));
    d.meta = Some("m".into());
    created(&s, &d, T0).await;
    let _: () = ::redis::cmd("HSET")
        .arg("tt:{pat}:r")
        .arg(&sid(1).0[..])
        .arg("garbage")
        .query(&mut c)
        .unwrap();
    let e = s
        .verify(&req("pat", 1, T0, T0, 99), T0.plus(HOUR + HOUR / 2))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Malformed(_)) && !e.is_unavailable(), "{e:?}");
    let score: f64 = ::redis::cmd("ZSCORE")
        .arg("tt:{pat}")
        .arg(&sid(1).0[..])
        .query(&mut c)
        .unwrap();
    assert_eq!(score as u64, T0.plus(2 * HOUR).0, "not renewed by a failed verify");
    // Listing drops the malformed record (the member lists as a plain session).
    let l = s.list(&uid("pat"), T0).await.unwrap();
    assert_eq!((l.len(), l[0].device.clone()), (1, None));
    let n: i64 = ::redis::cmd("HLEN").arg("tt:{pat}:r").query(&mut c).unwrap();
    assert_eq!(n, 0, "listing dropped the malformed record");
}

/// Layout v2 (one hash per user) upgrades to v3 without logging anybody
/// out: sessions written by the v2 scripts (`fixtures/store_v2/`) are
/// converted in place by the first v3 script that touches the user, with
/// their rotation state, device, metadata and expiry.
#[tokio::test]
async fn v2_sessions_upgrade_in_place_without_logging_anybody_out() {
    let (s, server) = make_redis(rotating()).await;
    let mut c = server.conn();
    let v2 = |body: &str| ::redis::Script::new(&format!("{}\n{body}", include_str!("fixtures/store_v2/record.lua")));
    let (login, verify) = (
        v2(include_str!("fixtures/store_v2/login.lua")),
        v2(include_str!("fixtures/store_v2/verify.lua")),
    );
    let exp = T0.plus(2 * HOUR).0;
    let v2_login = |c: &mut ::redis::Connection, user: &str, n: u8, device: &str, meta: &str| {
        let r: Vec<::redis::Value> = login
            .key(format!("tt:{{{user}}}"))
            .arg(T0.0)
            .arg(&sid(n).0[..])
            .arg(T0.0)
            .arg(exp)
            .arg(device)
            .arg("m")
            .arg(10)
            .arg(0)
            .arg("e")
            .arg(meta)
            .invoke(c)
            .unwrap();
        assert_eq!(r.first(), Some(&::redis::Value::Int(1)));
    };
    v2_login(&mut c, "vic", 1, "", "");
    v2_login(&mut c, "vic", 2, "pc", r#"{"ip":"192.0.2.9","ua":"a | b"}"#);
    v2_login(&mut c, "vic", 3, "", "");
    v2_login(&mut c, "wes", 4, "", "");
    // Session 3 rotated under v2 (its successor 30 not yet used).
    let now = T0.plus(HOUR);
    let r: Vec<::redis::Value> = verify
        .key("tt:{vic}")
        .arg(now.0)
        .arg(&sid(3).0[..])
        .arg(T0.0)
        .arg(2 * HOUR.as_millis() as u64)
        .arg(30 * 60_000)
        .arg(HOUR.as_millis() as u64)
        .arg(30_000)
        .arg(&sid(30).0[..])
        .arg(T0.plus(30 * 24 * HOUR).0)
        .invoke(&mut c)
        .unwrap();
    assert_eq!(r.first(), Some(&::redis::Value::Int(2)), "rotated under v2");
    let t: String = ::redis::cmd("TYPE").arg("tt:{vic}").query(&mut c).unwrap();
    assert_eq!(t, "hash", "v2 data in place");

    // v3 meets it: nobody is logged out, the rotation goes on.
    assert!(matches!(
        s.verify(&req("vic", 1, now, T0, 99), now).await.unwrap(),
        VerifyOutcome::Valid { .. }
    ));
    let t: String = ::redis::cmd("TYPE").arg("tt:{vic}").query(&mut c).unwrap();
    assert_eq!(t, "zset", "converted by the first script that touched it");
    assert_eq!(
        s.verify(&req("vic", 3, T0, T0, 98), now).await.unwrap(),
        VerifyOutcome::Rotated {
            successor: sid(30),
            idle_expires: now.plus(2 * HOUR)
        },
        "the v2 rotation's successor, still unused"
    );
    assert!(matches!(
        s.verify(&req("vic", 30, now, T0, 97), now).await.unwrap(),
        VerifyOutcome::Valid { .. }
    ));
    let l = s.list(&uid("vic"), now).await.unwrap();
    let mut got: Vec<(Sid, Option<String>, Option<String>)> =
        l.iter().map(|i| (i.sid, i.device.clone(), i.meta.clone())).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (sid(1), None, None),
            (
                sid(2),
                Some("pc".into()),
                Some(r#"{"ip":"192.0.2.9","ua":"a | b"}"#.into())
            ),
            (sid(30), None, None),
        ]
    );
    let ttl: i64 = ::redis::cmd("PTTL").arg("tt:{vic}").query(&mut c).unwrap();
    assert!(ttl > 0, "the expiry carried over: {ttl}");
    // Untouched users convert when an admin counts them.
    let st = s.stats(now).await.unwrap();
    assert_eq!((st.users, st.sessions), (2, 4));
    let t: String = ::redis::cmd("TYPE").arg("tt:{wes}").query(&mut c).unwrap();
    assert_eq!(t, "zset");
    // Converting is idempotent: a second pass changes nothing.
    assert_eq!(s.list(&uid("vic"), now).await.unwrap(), l);
    assert!(matches!(
        s.verify(&req("wes", 4, now, T0, 96), now).await.unwrap(),
        VerifyOutcome::Valid { .. }
    ));
}

/// Regression (issue 12, drift): a device name containing `|` reached the
/// Redis record through `Verifier::login` and corrupted it. Device types are
/// a validated type now; nothing else can reach a store.
#[test]
fn device_types_are_validated_at_the_library_boundary() {
    use twintoken::store::Device;
    for bad in ["pc|x", "", "PC", "a-very-long-device-type", "mobile\n", "pc "] {
        assert!(Device::new(bad).is_err(), "{bad:?}");
    }
    for good in ["pc", "mobile", "tv_2", "car-ui"] {
        assert_eq!(Device::new(good).unwrap().as_str(), good);
    }
}

/// A plain session is exactly one sorted-set member; a device type or
/// metadata adds one companion record.
#[tokio::test]
async fn a_plain_session_is_one_sorted_set_member() {
    let (s, server) = make_redis(settings()).await;
    let mut c = server.conn();
    created(&s, &new("xia", 1, None), T0).await;
    let t: String = ::redis::cmd("TYPE").arg("tt:{xia}").query(&mut c).unwrap();
    assert_eq!(t, "zset");
    let members: Vec<(Vec<u8>, u64)> = ::redis::cmd("ZRANGE")
        .arg("tt:{xia}")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut c)
        .unwrap();
    assert_eq!(members, vec![(sid(1).0.to_vec(), T0.plus(2 * HOUR).0)]);
    let n: i64 = ::redis::cmd("EXISTS").arg("tt:{xia}:r").query(&mut c).unwrap();
    assert_eq!(n, 0, "no companion record for a plain session");
    created(&s, &new("xia", 2, Some("pc")), T0).await;
    let n: i64 = ::redis::cmd("HLEN").arg("tt:{xia}:r").query(&mut c).unwrap();
    assert_eq!(n, 1);
    let n: i64 = ::redis::cmd("ZCARD").arg("tt:{xia}").query(&mut c).unwrap();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn a_frozen_redis_times_out_within_the_store_timeout() {
    let server = RedisServer::start();
    let timeout = Duration::from_millis(100);
    let s = twintoken::store::redis::RedisStore::connect(&[server.url().into()], "tt:", timeout, settings())
        .await
        .unwrap();
    created(&s, &new("quinn", 1, None), T0).await;
    server.freeze();
    let start = std::time::Instant::now();
    let e = s.verify(&req("quinn", 1, T0, T0, 99), T0).await.unwrap_err();
    let took = start.elapsed();
    server.thaw();
    assert!(matches!(e, StoreError::Timeout(_)), "{e:?}");
    assert!(
        took < Duration::from_secs(3),
        "bounded by the 100 ms timeout, not hanging: waited {took:?}"
    );
    // After the thaw the same store answers again.
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(v) = s.verify(&req("quinn", 1, T0, T0, 99), T0).await {
            assert!(matches!(v, VerifyOutcome::Valid { .. }));
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "store recovered after SIGCONT");
}

#[tokio::test]
async fn one_verify_is_one_round_trip() {
    use std::io::{BufRead, BufReader, Write};
    let (s, server) = make_redis(rotating()).await;
    created(&s, &new("rita", 1, None), T0).await;
    // Warm the script cache (the first call may need EVALSHA + SCRIPT LOAD + EVALSHA).
    s.verify(&req("rita", 1, T0, T0, 99), T0).await.unwrap();
    // MONITOR shows every command; those a script runs are tagged "[0 lua]",
    // those a client sends carry the client's address.
    let mut mon = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    mon.write_all(b"MONITOR\r\n").unwrap();
    mon.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut lines = BufReader::new(mon.try_clone().unwrap()).lines();
    assert_eq!(lines.next().and_then(|l| l.ok()).as_deref(), Some("+OK"));
    // Ten verifies, including a renewal and a rotation.
    for i in 0..10u32 {
        let t = T0.plus(MIN * (7 * i));
        s.verify(&req("rita", 1, T0, T0, 99), t).await.unwrap();
    }
    let mut client_cmds = Vec::new();
    let mut script_cmds = 0;
    while let Some(Ok(l)) = lines.next() {
        if l.contains("[0 lua]") {
            script_cmds += 1;
        } else {
            client_cmds.push(l);
        }
    }
    assert_eq!(client_cmds.len(), 10, "one command per verify: {client_cmds:#?}");
    assert!(
        client_cmds
            .iter()
            .all(|l| l.contains("\"EVALSHA\"") || l.contains("\"evalsha\"")),
        "{client_cmds:#?}"
    );
    assert!(script_cmds > 0, "the monitor saw the scripts' own commands");
}

// The revocation feed: every node learns every revocation, live or by
// catching up from the log.

use twintoken::store::{FeedEvent, Revocation};

/// The next event, its revocation time left out (compared apart, in
/// `redis_feed_revocations_carry_the_time_they_were_logged`).
async fn next_event(rx: &mut tokio::sync::mpsc::Receiver<FeedEvent>) -> FeedEvent {
    match tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("feed event within 5 s")
        .expect("feed open")
    {
        FeedEvent::Revoked(r, _) => FeedEvent::Revoked(r, None),
        other => other,
    }
}

fn revoked(u: &str, sids: &[u8]) -> FeedEvent {
    FeedEvent::Revoked(
        Revocation::Sessions {
            uid: uid(u),
            sids: sids.iter().map(|n| sid(*n)).collect(),
        },
        None,
    )
}

#[tokio::test]
async fn memory_feed_delivers_revocations_and_evictions() {
    let s = twintoken::store::memory::MemoryStore::new(with_login(LoginMode::Single, 10, Overflow::EvictOldest, &[]));
    let mut feed = s.revocation_feed();
    assert_eq!(next_event(&mut feed).await, FeedEvent::CaughtUp);
    created(&s, &new("sam", 1, None), T0).await;
    created(&s, &new("sam", 2, None), T0).await;
    assert_eq!(
        next_event(&mut feed).await,
        revoked("sam", &[1]),
        "single-mode eviction is a revocation"
    );
    s.revoke(&uid("sam"), &sid(2), T0).await.unwrap();
    assert_eq!(next_event(&mut feed).await, revoked("sam", &[2]));
    s.revoke_all(&uid("sam"), T0).await.unwrap();
    assert_eq!(
        next_event(&mut feed).await,
        FeedEvent::Revoked(Revocation::User { uid: uid("sam") }, None)
    );
}

#[tokio::test]
async fn redis_feed_replays_the_log_then_follows_live_revocations() {
    let (s, _server) = make_redis(settings()).await;
    for n in 1..=3 {
        created(&s, &new("tom", n, None), T0).await;
    }
    // Revoked before this node's feed started: replayed from the log.
    s.revoke(&uid("tom"), &sid(1), T0).await.unwrap();
    let mut feed = s.revocation_feed();
    assert_eq!(next_event(&mut feed).await, revoked("tom", &[1]));
    assert_eq!(next_event(&mut feed).await, FeedEvent::CaughtUp);
    // Live.
    s.revoke(&uid("tom"), &sid(2), T0).await.unwrap();
    assert_eq!(next_event(&mut feed).await, revoked("tom", &[2]));
    s.revoke_all(&uid("tom"), T0).await.unwrap();
    assert_eq!(
        next_event(&mut feed).await,
        FeedEvent::Revoked(Revocation::User { uid: uid("tom") }, None)
    );
}

/// Every revocation comes with the time Redis logged it, replayed or live:
/// a node catching up applies a user-wide revocation as of then, not as of
/// its own start.
#[tokio::test]
async fn redis_feed_revocations_carry_the_time_they_were_logged() {
    use twintoken::time::{Clock as _, SystemClock};
    let (s, _server) = make_redis(settings()).await;
    created(&s, &new("ivy", 1, None), T0).await;
    let before = SystemClock.now();
    s.revoke_all(&uid("ivy"), T0).await.unwrap();
    let after = SystemClock.now();
    let mut feed = s.revocation_feed();
    let ev = tokio::time::timeout(Duration::from_secs(5), feed.recv()).await.unwrap();
    let Some(FeedEvent::Revoked(Revocation::User { .. }, Some(at))) = ev else {
        panic!("a timed user-wide revocation, got {ev:?}");
    };
    assert!(
        before <= at && at <= after,
        "logged at {at:?}, between {before:?} and {after:?}"
    );
}

#[tokio::test]
async fn redis_feed_catches_up_after_losing_its_connection_without_loss_or_duplicates() {
    let (s, server) = make_redis(settings()).await;
    for n in 1..=4 {
        created(&s, &new("uma", n, None), T0).await;
    }
    let mut feed = s.revocation_feed();
    assert_eq!(next_event(&mut feed).await, FeedEvent::CaughtUp);
    // Cut the feed's subscription, and revoke while it reconnects.
    let _: i64 = ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut server.conn())
        .unwrap();
    s.revoke(&uid("uma"), &sid(3), T0).await.unwrap();
    let mut seen = Vec::new();
    let mut lost = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), feed.recv()).await {
            Ok(Some(FeedEvent::Lost)) => lost = true,
            Ok(Some(FeedEvent::Revoked(r, _))) => seen.push(r),
            Ok(Some(FeedEvent::CaughtUp)) if lost => break,
            Ok(Some(FeedEvent::CaughtUp)) => {}
            Ok(None) => panic!("feed closed"),
            Err(_) => {}
        }
    }
    assert!(lost, "the broken subscription was reported");
    // After the catch-up a live revocation still arrives.
    s.revoke(&uid("uma"), &sid(4), T0).await.unwrap();
    loop {
        match next_event(&mut feed).await {
            FeedEvent::Revoked(r, _) => {
                seen.push(r);
                if seen.len() >= 2 {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let want: Vec<FeedEvent> = vec![revoked("uma", &[3]), revoked("uma", &[4])];
    assert_eq!(
        seen.into_iter()
            .map(|r| FeedEvent::Revoked(r, None))
            .collect::<Vec<_>>(),
        want,
        "each exactly once, in order"
    );
}

#[tokio::test]
async fn cluster_revocations_reach_a_node_subscribed_elsewhere() {
    let (a, cluster) = make_cluster(settings()).await;
    // Node B knows the cluster through another node first.
    let mut urls: Vec<twintoken::config::Secret> = cluster.urls().into_iter().map(Into::into).collect();
    urls.rotate_left(1);
    let b = twintoken::store::redis::RedisStore::connect(&urls, "tt:", Duration::from_secs(2), settings())
        .await
        .unwrap();
    let mut feed = b.revocation_feed();
    assert_eq!(next_event(&mut feed).await, FeedEvent::CaughtUp);
    for (i, u) in ["v1", "v2", "v3", "v4"].iter().enumerate() {
        created(&a, &new(u, i as u8 + 1, None), T0).await;
        a.revoke(&uid(u), &sid(i as u8 + 1), T0).await.unwrap();
        assert_eq!(next_event(&mut feed).await, revoked(u, &[i as u8 + 1]));
    }
}

#[test]
fn revocation_wire_form_round_trips_and_rejects_garbage() {
    let a = Revocation::Sessions {
        uid: uid("用户-7"),
        sids: vec![sid(1), sid(2)],
    };
    let b = Revocation::User { uid: uid("x") };
    assert_eq!(Revocation::decode(&a.encode()), Some(a));
    assert_eq!(Revocation::decode(&b.encode()), Some(b));
    for bad in [
        &b""[..],
        b"s",
        b"s\x05ab",
        b"u\x01xy",
        b"s\x01x",
        b"s\x01x123",
        b"q\x01x",
        b"u\x00",
    ] {
        assert_eq!(Revocation::decode(bad), None, "{bad:?}");
    }
}

#[tokio::test]
async fn a_flushed_script_cache_is_reloaded_transparently() {
    let (s, server) = make_redis(settings()).await;
    created(&s, &new("wes", 1, None), T0).await;
    // What a restart or failover does to the script cache: EVALSHA then
    // meets NOSCRIPT, and the store loads the script and retries.
    let _: () = ::redis::cmd("SCRIPT").arg("FLUSH").query(&mut server.conn()).unwrap();
    assert!(matches!(
        s.verify(&req("wes", 1, T0, T0, 99), T0).await.unwrap(),
        VerifyOutcome::Valid { .. }
    ));
    assert_eq!(
        live(&s, "wes", T0).await,
        vec![sid(1)],
        "every script recovers, not just verify"
    );
}

/// The embedded store forgets users whose sessions all ended, as Redis
/// keys expire: a login sweeps at most once a minute.
#[tokio::test]
async fn the_memory_store_forgets_users_whose_sessions_ended() {
    let s = twintoken::store::memory::MemoryStore::new(settings());
    for i in 0..100u8 {
        created(&s, &new(&format!("gone{i}"), i, None), T0).await;
    }
    assert_eq!(s.users_held(), 100);
    // Two hours later (idle expiry) one login sweeps the others away.
    created(&s, &new("fresh", 200, None), T0.plus(2 * HOUR + MIN)).await;
    assert_eq!(s.users_held(), 1);
}

/// Issue 20: a Redis Cluster with replicas where a master fails over
/// (`CLUSTER FAILOVER` on its replica): the store follows the moved slots
/// and every session written before keeps verifying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_keep_verifying_across_a_cluster_failover() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start_with_replicas)
        .await
        .unwrap();
    let s = twintoken::store::redis::RedisStore::connect(
        &cluster.urls().into_iter().map(Into::into).collect::<Vec<_>>(),
        "tt:",
        Duration::from_secs(2),
        settings(),
    )
    .await
    .unwrap();
    let users: Vec<String> = (0..30).map(|i| format!("fo{i}")).collect();
    for (i, u) in users.iter().enumerate() {
        created(&s, &new(u, i as u8 + 1, None), T0).await;
    }
    let role = |n: &RedisServer| -> String {
        let r: Vec<::redis::Value> = ::redis::cmd("ROLE").query(&mut n.conn()).unwrap();
        match r.first() {
            Some(::redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(::redis::Value::SimpleString(s)) => s.clone(),
            other => panic!("ROLE: {other:?}"),
        }
    };
    // Every master's writes reached its replica before the failover.
    // (A new cluster's replicas may still be making their first sync.)
    for n in cluster.nodes.iter().filter(|n| role(n) == "master") {
        let start = std::time::Instant::now();
        loop {
            let acked: i64 = ::redis::cmd("WAIT").arg(1).arg(1000).query(&mut n.conn()).unwrap();
            if acked == 1 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "replica of {} in sync",
                n.port
            );
        }
    }
    let replica = cluster.nodes.iter().find(|n| role(n) == "slave").expect("a replica");
    let _: () = ::redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query(&mut replica.conn())
        .unwrap();
    let start = std::time::Instant::now();
    while role(replica) != "master" {
        assert!(start.elapsed() < Duration::from_secs(20), "the replica took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, u) in users.iter().enumerate() {
        let start = std::time::Instant::now();
        loop {
            // A call may meet the switch itself (MOVED, a refreshed slot map);
            // the session must verify within seconds, never be lost.
            match s.verify(&req(u, i as u8 + 1, T0, T0, 200), T0.plus(MIN)).await {
                Ok(VerifyOutcome::Valid { .. }) => break,
                Ok(other) => panic!("{u}: {other:?} after the failover"),
                Err(e) => {
                    assert!(start.elapsed() < Duration::from_secs(10), "{u}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let st = s.stats(T0.plus(MIN)).await.unwrap();
    assert_eq!((st.users, st.sessions), (30, 30), "counted on the new masters");
}
