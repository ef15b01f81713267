//! The refresher lease: one KV entry per account (`codex-auth-lease-<account>`) holding
//! `{host_id, expires_at, instance, nonce}`, written with check-and-set so that of two
//! hosts racing for it exactly one write succeeds. Pure: the caller reads the record, asks
//! [`decide`], writes with the returned CAS version and carries out the answer. Time is a
//! parameter.
//!
//! Who holds it: `host_id` is the name operators see (status `lease_holder`, D-Bus
//! `LeaseHolder`); `instance` is generated once per agent into its state dir, so two agents
//! with one host_id (two configs on a host, a cloned VM) are told apart; `nonce` is new for
//! every write and remembered by its writer (fleet.json), so a record that carries our
//! host_id and instance but was written by someone else (a copied state dir) is told apart
//! too. A lease that names our host_id but that we did not write is a [`Collision`]: the
//! agent does not refresh and says why.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// The KV key of an account's lease.
pub fn lease_key(account: &str) -> String {
    format!("codex-auth-lease-{account}")
}

/// What the lease key holds (JSON, no secrets). Records of older agents have neither
/// `instance` nor `nonce`; they still parse and are judged by `host_id` alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub host_id: String,
    pub expires_at: DateTime<Utc>,
    /// The writer's instance id (state_dir/instance-id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// New for every write; its writer remembers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// This agent as a lease holder: the configured host id, its instance id, and the nonces
/// of lease writes it made that may be in Vault (the last confirmed one, and one whose
/// answer it never saw).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Me {
    pub host_id: String,
    pub instance: String,
    pub nonces: Vec<String>,
}

impl Me {
    /// Whether `r` is a record this agent wrote (an older agent's record without an
    /// instance counts as ours when it names our host_id: that is what it meant then).
    pub fn wrote(&self, r: &LeaseRecord) -> bool {
        r.host_id == self.host_id
            && match (&r.instance, &r.nonce) {
                (None, _) => true,
                (Some(i), Some(n)) => *i == self.instance && self.nonces.contains(n),
                (Some(_), None) => false,
            }
    }
}

impl LeaseRecord {
    /// The record `me` writes, with the fresh `nonce`, to hold the lease for `ttl` from `now`.
    pub fn new(me: &Me, nonce: &str, now: DateTime<Utc>, ttl: Duration) -> LeaseRecord {
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        LeaseRecord {
            host_id: me.host_id.clone(),
            expires_at: now.checked_add_signed(ttl).unwrap_or(DateTime::<Utc>::MAX_UTC),
            instance: Some(me.instance.clone()),
            nonce: Some(nonce.to_string()),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Option<LeaseRecord> {
        serde_json::from_slice(bytes).ok()
    }
}

/// A live lease that names our host_id but that we did not write: another agent shares
/// our identity. Holds only names, never a nonce (it would help nobody).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collision {
    pub host_id: String,
    /// The instance that wrote the lease (None: an older agent without instance ids).
    pub theirs: Option<String>,
    pub ours: String,
    pub until: DateTime<Utc>,
}

impl Collision {
    /// Both have the same instance id too: a copy of one agent's state dir.
    pub fn same_instance(&self) -> bool {
        self.theirs.as_deref() == Some(self.ours.as_str())
    }
}

impl fmt::Display for Collision {
    /// Both holders by name, what it means, and that we stand aside; the fix is the caller's
    /// (it knows where host_id came from).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.host_id;
        if self.same_instance() {
            write!(
                f,
                "two agents share host_id {h} (cloned VM image?) and instance {} (its state dir was copied \
                    too): the lease is held by host_id {h} instance {}, renewed by the other one, not by this agent",
                self.ours, self.ours
            )?;
        } else {
            let theirs = self.theirs.as_deref().unwrap_or("unknown (an older agent)");
            write!(
                f,
                "two agents share host_id {h} (cloned VM image?): the lease is held by host_id {h} instance \
                    {theirs}; this agent is host_id {h} instance {}",
                self.ours
            )?;
        }
        write!(f, "; not refreshing here (the lease runs until {} unless renewed)", self.until.to_rfc3339())
    }
}

/// What to do about the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Nobody holds a live lease: write ours with `cas` (0 = create).
    Take { cas: u64 },
    /// We hold it: extend it with `cas`.
    Renew { cas: u64 },
    /// Another host holds a live lease: do not refresh, follow.
    Follow { holder: String, until: DateTime<Utc> },
    /// A live lease names our host_id but we did not write it: do not refresh, follow,
    /// and report it.
    Collision(Collision),
}

/// Decide from the current lease (record and its KV version; `None` = no key) who refreshes.
/// An unreadable record counts as free, so a corrupted key cannot block the fleet forever;
/// an expired one too, whoever wrote it. The CAS write still guarantees a single winner.
pub fn decide(current: Option<(Option<&LeaseRecord>, u64)>, me: &Me, now: DateTime<Utc>) -> LeaseDecision {
    match current {
        None => LeaseDecision::Take { cas: 0 },
        Some((Some(r), version)) if me.wrote(r) => LeaseDecision::Renew { cas: version },
        Some((Some(r), _)) if r.expires_at > now && r.host_id == me.host_id => LeaseDecision::Collision(Collision {
            host_id: r.host_id.clone(),
            theirs: r.instance.clone(),
            ours: me.instance.clone(),
            until: r.expires_at,
        }),
        Some((Some(r), _)) if r.expires_at > now => {
            LeaseDecision::Follow { holder: r.host_id.clone(), until: r.expires_at }
        }
        Some((_, version)) => LeaseDecision::Take { cas: version },
    }
}

/// Vault requests a refresher may still make after its lease write, each up to
/// `vault.request_timeout`: the pre-spend re-reads of the rotating key and the lease, the
/// check-and-set write of the result, and the re-read after a conflict.
pub const VAULT_REQUESTS_AFTER_LEASE: u32 = 4;

/// The shortest lease that outlasts one refresher cycle: the worker's whole deadline
/// (`worker_deadline`: lock waits, the refresh, Codex's commit locks) plus the Vault
/// requests after it. A lease that runs out mid-cycle lets another refresher take it and
/// spend the refresh token this one is spending.
pub fn min_ttl(worker_deadline: Duration, vault_timeout: Duration) -> Duration {
    worker_deadline + vault_timeout * VAULT_REQUESTS_AFTER_LEASE
}

/// Why a refresher must not spend the refresh token right now (see [`may_spend`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpendRefusal {
    /// The rotating key is gone.
    RotatingGone,
    /// The rotating key moved on from the version this cycle installed: its refresh token
    /// belongs to a credential someone else already rotated.
    Rotated { read: u64, now: u64 },
    /// The lease is not ours (any more).
    NotOurs(LeaseDecision),
    /// The lease is ours but runs out before the refresh and its upload could finish.
    Expiring { until: DateTime<Utc>, needed: Duration },
}

impl fmt::Display for SpendRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpendRefusal::RotatingGone => write!(f, "the rotating key no longer exists"),
            SpendRefusal::Rotated { read, now } => write!(
                f,
                "the rotating key moved from version {read} (installed for this refresh) to version {now}: \
                    another agent rotated it"
            ),
            SpendRefusal::NotOurs(LeaseDecision::Follow { holder, until }) => {
                write!(f, "the lease is now held by {holder} (until {})", until.to_rfc3339())
            }
            SpendRefusal::NotOurs(LeaseDecision::Collision(c)) => write!(f, "{c}"),
            SpendRefusal::NotOurs(_) => write!(f, "this agent no longer holds the lease"),
            SpendRefusal::Expiring { until, needed } => write!(
                f,
                "this agent's lease runs out at {}, before the refresh and its upload could finish ({} needed)",
                until.to_rfc3339(),
                humantime::format_duration(*needed)
            ),
        }
    }
}

/// Right before the POST: may this refresher spend the refresh token of the rotating key's
/// version `read`? Only when that version is still the current one (`rotating`, just
/// re-read), and the lease (just re-read) is one we wrote and lasts `needed` longer (the
/// refresh, the commit and the upload).
pub fn may_spend(
    rotating: Option<u64>,
    read: u64,
    lease: Option<(Option<&LeaseRecord>, u64)>,
    me: &Me,
    now: DateTime<Utc>,
    needed: Duration,
) -> Result<(), SpendRefusal> {
    match rotating {
        None => return Err(SpendRefusal::RotatingGone),
        Some(v) if v != read => return Err(SpendRefusal::Rotated { read, now: v }),
        Some(_) => {}
    }
    let record = match (lease, decide(lease, me, now)) {
        (Some((Some(r), _)), LeaseDecision::Renew { .. }) => r,
        (_, d) => return Err(SpendRefusal::NotOurs(d)),
    };
    let needed_c = chrono::Duration::from_std(needed).unwrap_or(chrono::Duration::MAX);
    if now.checked_add_signed(needed_c).is_none_or(|end| end > record.expires_at) {
        return Err(SpendRefusal::Expiring { until: record.expires_at, needed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn me(host: &str, instance: &str, nonces: &[&str]) -> Me {
        Me { host_id: host.into(), instance: instance.into(), nonces: nonces.iter().map(|n| n.to_string()).collect() }
    }

    #[test]
    fn free_own_live_and_expired_leases() {
        let (a, b) = (me("a", "ia", &["n1"]), me("b", "ib", &[]));
        assert_eq!(decide(None, &a, t(0)), LeaseDecision::Take { cas: 0 });
        let mine = LeaseRecord::new(&a, "n1", t(0), Duration::from_secs(60));
        assert_eq!(mine.expires_at, t(60));
        assert_eq!(decide(Some((Some(&mine), 4)), &a, t(30)), LeaseDecision::Renew { cas: 4 });
        assert_eq!(decide(Some((Some(&mine), 4)), &a, t(90)), LeaseDecision::Renew { cas: 4 });
        assert_eq!(
            decide(Some((Some(&mine), 4)), &b, t(59)),
            LeaseDecision::Follow { holder: "a".into(), until: t(60) }
        );
        assert_eq!(decide(Some((Some(&mine), 4)), &b, t(60)), LeaseDecision::Take { cas: 4 });
        assert_eq!(decide(Some((None, 7)), &b, t(0)), LeaseDecision::Take { cas: 7 });
    }

    #[test]
    fn record_round_trips_and_huge_ttl_saturates() {
        let r = LeaseRecord::new(&me("vm-1", "i", &[]), "n", t(0), Duration::from_secs(900));
        assert_eq!(LeaseRecord::parse(&r.to_bytes()), Some(r));
        assert!(LeaseRecord::parse(b"not json").is_none());
        let far = LeaseRecord::new(&me("x", "i", &[]), "n", t(0), Duration::MAX);
        assert!(far.expires_at > t(1_000_000_000));
        assert_eq!(lease_key("team"), "codex-auth-lease-team");
    }

    #[test]
    fn an_older_agents_record_parses_and_counts_by_host_id() {
        let old = br#"{"host_id":"vm-1","expires_at":"2027-01-15T08:00:00Z"}"#;
        let r = LeaseRecord::parse(old).expect("a record without instance and nonce parses");
        assert_eq!((r.instance.as_deref(), r.nonce.as_deref()), (None, None));
        let now = DateTime::parse_from_rfc3339("2027-01-15T07:59:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(decide(Some((Some(&r), 3)), &me("vm-1", "i", &[]), now), LeaseDecision::Renew { cas: 3 });
        assert!(matches!(decide(Some((Some(&r), 3)), &me("vm-2", "i", &[]), now), LeaseDecision::Follow { .. }));
        // And an older agent reads ours: unknown fields are ignored by its parser, which has
        // the same two fields.
        let ours = LeaseRecord::new(&me("vm-1", "i", &[]), "n", now, Duration::from_secs(60)).to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&ours).unwrap();
        assert_eq!(v["host_id"], "vm-1");
        assert!(v["expires_at"].is_string());
    }

    #[test]
    fn the_same_host_id_written_by_another_instance_or_with_another_nonce_is_a_collision() {
        let holder = me("vm-1", "ia", &["n1"]);
        let record = LeaseRecord::new(&holder, "n1", t(0), Duration::from_secs(900));
        // Two configs on one host: another instance of the same host_id.
        let second = me("vm-1", "ib", &[]);
        let d = decide(Some((Some(&record), 5)), &second, t(10));
        let LeaseDecision::Collision(c) = d else { panic!("{d:?}") };
        assert_eq!(
            c,
            Collision { host_id: "vm-1".into(), theirs: Some("ia".into()), ours: "ib".into(), until: t(900) }
        );
        let text = c.to_string();
        assert!(text.contains("two agents share host_id vm-1 (cloned VM image?)"), "{text}");
        assert!(text.contains("held by host_id vm-1 instance ia; this agent is host_id vm-1 instance ib"), "{text}");
        assert!(text.contains("not refreshing"), "{text}");
        // A copied state dir: same instance, but a nonce this agent never wrote.
        let copy = me("vm-1", "ia", &["n0"]);
        let LeaseDecision::Collision(c) = decide(Some((Some(&record), 5)), &copy, t(10)) else { panic!() };
        assert!(c.same_instance());
        assert!(c.to_string().contains("and instance ia (its state dir was copied too)"), "{c}");
        // A record with our instance but without a nonce is not ours either.
        let no_nonce = LeaseRecord { nonce: None, ..record.clone() };
        assert!(matches!(decide(Some((Some(&no_nonce), 5)), &holder, t(10)), LeaseDecision::Collision(_)));
        // Once it runs out, it is free for anyone (the other one stopped renewing).
        assert_eq!(decide(Some((Some(&record), 5)), &second, t(900)), LeaseDecision::Take { cas: 5 });
        assert_eq!(decide(Some((Some(&record), 5)), &copy, t(901)), LeaseDecision::Take { cas: 5 });
        // The writer itself, with either nonce it remembers.
        assert_eq!(
            decide(Some((Some(&record), 5)), &me("vm-1", "ia", &["n0", "n1"]), t(10)),
            LeaseDecision::Renew { cas: 5 }
        );
    }

    #[test]
    fn min_ttl_adds_the_vault_requests_after_the_lease() {
        assert_eq!(min_ttl(Duration::from_secs(285), Duration::from_secs(1)), Duration::from_secs(289));
        assert_eq!(min_ttl(Duration::from_secs(295), Duration::from_secs(10)), Duration::from_secs(335));
    }

    #[test]
    fn a_token_is_spent_only_from_the_current_version_under_our_own_lasting_lease() {
        let a = me("vm-1", "ia", &["n1"]);
        let lease = LeaseRecord::new(&a, "n1", t(0), Duration::from_secs(300));
        let cur = Some((Some(&lease), 9));
        let need = Duration::from_secs(100);
        assert_eq!(may_spend(Some(4), 4, cur, &a, t(10), need), Ok(()));
        assert_eq!(may_spend(Some(4), 4, cur, &a, t(200), need), Ok(()), "ends exactly at the expiry");
        assert_eq!(may_spend(None, 4, cur, &a, t(10), need), Err(SpendRefusal::RotatingGone));
        let e = may_spend(Some(5), 4, cur, &a, t(10), need).unwrap_err();
        assert_eq!(e, SpendRefusal::Rotated { read: 4, now: 5 });
        assert!(e.to_string().contains("moved from version 4 (installed for this refresh) to version 5"), "{e}");
        let e = may_spend(Some(4), 4, cur, &a, t(201), need).unwrap_err();
        assert_eq!(e, SpendRefusal::Expiring { until: t(300), needed: need });
        assert!(e.to_string().contains("runs out at") && e.to_string().contains("1m 40s needed"), "{e}");
        // Another host took it over, another instance of our host_id wrote it, or no lease.
        let b = LeaseRecord::new(&me("vm-2", "ib", &[]), "m", t(5), Duration::from_secs(300));
        let e = may_spend(Some(4), 4, Some((Some(&b), 10)), &a, t(10), need).unwrap_err();
        assert!(e.to_string().starts_with("the lease is now held by vm-2 (until"), "{e}");
        let twin = LeaseRecord::new(&me("vm-1", "ia", &[]), "m", t(5), Duration::from_secs(300));
        let e = may_spend(Some(4), 4, Some((Some(&twin), 10)), &a, t(10), need).unwrap_err();
        assert!(e.to_string().contains("two agents share host_id vm-1"), "{e}");
        assert!(matches!(may_spend(Some(4), 4, None, &a, t(10), need), Err(SpendRefusal::NotOurs(_))));
        assert!(matches!(may_spend(Some(4), 4, Some((None, 3)), &a, t(10), need), Err(SpendRefusal::NotOurs(_))));
        // An older agent's record of our host_id is ours only as far as host_id goes; it
        // has an expiry all the same.
        let old = LeaseRecord { instance: None, nonce: None, ..lease.clone() };
        assert_eq!(may_spend(Some(4), 4, Some((Some(&old), 9)), &a, t(10), need), Ok(()));
    }
}

#[cfg(test)]
mod proptests {
    //! Two agents sharing one host_id (two instances, or one copied instance) run cycles in
    //! any interleaving against a model KV with check-and-set. Property: no refresh by one
    //! of them happens while a lease the other one wrote is still live — the single-writer
    //! guarantee the lease exists for.
    use super::*;
    use proptest::prelude::*;

    const TTL: i64 = 100;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    /// One agent in the model: identity and the nonces it remembers.
    #[derive(Clone, Debug)]
    struct Agent {
        me: Me,
        /// A decision read but not yet written (the read/write gap where races happen).
        pending: Option<(u64, String)>,
    }

    #[derive(Default)]
    struct Kv {
        record: Option<LeaseRecord>,
        version: u64,
    }

    proptest! {
        #[test]
        fn two_agents_with_one_host_id_never_both_refresh_under_a_live_lease(
            copied in any::<bool>(),
            steps in prop::collection::vec((0usize..2, any::<bool>(), 0i64..40), 1..80),
        ) {
            let b_instance = if copied { "i-a" } else { "i-b" };
            let agent = |instance: &str| Agent {
                me: Me { host_id: "h".into(), instance: instance.into(), nonces: vec!["n0".into()] },
                pending: None,
            };
            let mut agents = [agent("i-a"), agent(b_instance)];
            // The lease both started from (a copied state dir remembers the same nonce).
            let first = LeaseRecord::new(&agents[0].me, "n0", t(0), Duration::from_secs(TTL as u64));
            let mut kv = Kv { record: Some(first), version: 1 };
            // (agent, lease expiry) of every refresh.
            let mut refreshes: Vec<(usize, DateTime<Utc>, DateTime<Utc>)> = Vec::new();
            let mut now = 0i64;
            let mut counter = 0u64;
            for (i, write_now, dt) in steps {
                now += dt;
                let a = &mut agents[i];
                if let Some((cas, nonce)) = a.pending.take().filter(|_| write_now) {
                    if cas == kv.version {
                        kv.version += 1;
                        kv.record = Some(LeaseRecord::new(&a.me, &nonce, t(now), Duration::from_secs(TTL as u64)));
                        a.me.nonces = vec![nonce];
                        refreshes.push((i, t(now), t(now + TTL)));
                    }
                    continue;
                }
                let current = kv.record.as_ref().map(|r| (Some(r), kv.version));
                match decide(current, &a.me, t(now)) {
                    LeaseDecision::Take { cas } | LeaseDecision::Renew { cas } => {
                        counter += 1;
                        a.pending = Some((cas, format!("n{counter}")));
                    }
                    LeaseDecision::Follow { .. } | LeaseDecision::Collision(_) => {}
                }
            }
            for w in refreshes.windows(2) {
                let ((a, _, live_until), (b, at, _)) = (w[0], w[1]);
                prop_assert!(a == b || at >= live_until, "agent {b} refreshed at {at} under agent {a}'s lease \
                    (until {live_until})");
            }
        }
    }
}
