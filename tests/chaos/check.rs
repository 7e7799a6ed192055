//! The checker: a whole history against the invariants of
//! `docs/security.md` ("Invariants"). It knows nothing of how the service
//! works inside; it reads what every request got and when, what the client
//! was told (logins, logouts and their answers), and when the store was
//! unreachable, and looks for an answer no correct service could have
//! given.
//!
//! A session's end counts from the moment its acknowledgement came back
//! (`tr` of the 200); a request counts from the moment it was sent (`ts`).
//! An operation whose answer was lost (cancelled, timed out, or answered
//! with an error while the store was slow: a frozen Redis runs the queued
//! command when it thaws) may or may not have happened: the session is
//! *uncertain* from then on, and only the rules that hold whichever way it
//! went are applied to it.

use std::collections::{HashMap, HashSet};

use super::history::{Op, Rec, RunInfo};

/// How long a revocation may take to reach every node's revoked cache
/// over a connected feed (the broadcast; measured in milliseconds).
pub const PROPAGATION: f64 = 1000.0;
/// After the store answers again: the breaker's probe (200 ms), the
/// connections' reconnect and the feed's catch-up.
pub const SETTLE: f64 = 3000.0;
/// After the store stops answering: the requests already waiting on it
/// time out (`store.timeout`) before the breaker opens.
pub const BREAKER: f64 = 1000.0;

/// One broken rule.
#[derive(Debug)]
pub struct Violation {
    pub invariant: &'static str,
    pub op: u64,
    pub what: String,
    /// The operations that led to it (the session's history).
    pub context: Vec<u64>,
}

#[derive(Default)]
struct Session {
    user: String,
    created: f64,
    /// When the end was acknowledged, by which operation, and whether it
    /// was a revocation every node hears of (not a store-side expiry,
    /// which the crypto fallback cannot know).
    end: Option<(f64, u64, bool)>,
    /// Logouts accepted while the store was unreachable (202): node, time.
    pending: Vec<(usize, f64, u64)>,
    /// From when the session's state is not known to the client.
    uncertain: Option<f64>,
    /// Bound to a device key: the binding's request sent, its answer back.
    bound: Option<(f64, f64)>,
    ops: Vec<u64>,
}

impl Session {
    fn uncertain_at(&mut self, t: f64) {
        self.uncertain = Some(self.uncertain.map_or(t, |u| u.min(t)));
    }

    fn end_at(&mut self, t: f64, op: u64, heard: bool) {
        if self.end.is_none_or(|(e, _, _)| t < e) {
            self.end = Some((t, op, heard));
        }
    }

    /// Known live (created, not ended, not pending, certain) at `t`.
    fn live(&self, t: f64, until: f64) -> bool {
        self.created < t
            && self.end.is_none_or(|(e, _, _)| e > until)
            && self.pending.is_empty()
            && self.uncertain.is_none_or(|u| u > until)
    }
}

pub struct Checker<'h> {
    info: RunInfo,
    ops: HashMap<u64, &'h Op>,
    order: Vec<&'h Op>,
    outages: Vec<(f64, f64)>,
    starts: HashMap<usize, Vec<f64>>,
    retired: HashMap<u32, f64>,
    sessions: HashMap<u64, Session>,
    sid_owner: HashMap<String, u64>,
    pub violations: Vec<Violation>,
}

impl<'h> Checker<'h> {
    pub fn new(history: &'h [Rec]) -> Result<Checker<'h>, String> {
        let info = match history.first() {
            Some(Rec::Run(i)) => i.clone(),
            _ => return Err("the history does not start with its run line".into()),
        };
        let mut c = Checker {
            info,
            ops: HashMap::new(),
            order: Vec::new(),
            outages: Vec::new(),
            starts: HashMap::new(),
            retired: HashMap::new(),
            sessions: HashMap::new(),
            sid_owner: HashMap::new(),
            violations: Vec::new(),
        };
        for r in history {
            match r {
                Rec::Run(_) => {}
                Rec::Op(o) => {
                    c.ops.insert(o.id, o);
                    c.order.push(o);
                }
                Rec::Outage { start, end, .. } => c.outages.push((*start, *end)),
                Rec::Node { node, event, t } if event == "start" => c.starts.entry(*node).or_default().push(*t),
                Rec::Node { .. } => {}
                Rec::Key { event, kid, t } if event == "retire" => {
                    c.retired.insert(*kid, *t);
                }
                Rec::Key { .. } => {}
            }
        }
        c.order.sort_by(|a, b| a.ts.total_cmp(&b.ts));
        c.learn();
        Ok(c)
    }

    /// What the client was told: sessions, their ends, their sids.
    fn learn(&mut self) {
        let mut bursts: HashMap<u64, (u64, usize)> = HashMap::new();
        for o in self.order.clone() {
            if let Some(id) = o.session {
                let s = self.sessions.entry(id).or_default();
                s.ops.push(o.id);
                if !o.sid.is_empty() {
                    self.sid_owner.insert(o.sid.clone(), id);
                }
            }
            match o.op.as_str() {
                "login" | "issue" if o.ok() => {
                    if let Some(id) = o.session {
                        let s = self.sessions.entry(id).or_default();
                        s.user = o.user.clone();
                        s.created = o.tr;
                    }
                }
                "logout" | "kick" => {
                    let Some(id) = o.session else { continue };
                    let s = self.sessions.entry(id).or_default();
                    match o.status {
                        200 => s.end_at(o.tr, o.id, o.op != "expire"),
                        202 => s.pending.push((o.node, o.tr, o.id)),
                        // Already over (401), or no such session (404): nothing changed.
                        401 | 404 => {}
                        // Refused before it was tried (CSRF, bad request).
                        400 | 403 => {}
                        0 if o.error == "connect" => {}
                        _ => s.uncertain_at(o.ts),
                    }
                }
                "logout_all" | "kick_user" | "ban" | "expire" => {
                    for id in &o.ends {
                        let s = self.sessions.entry(*id).or_default();
                        match o.status {
                            200 => s.end_at(o.tr, o.id, o.op != "expire"),
                            202 => s.pending.push((o.node, o.tr, o.id)),
                            401 | 400 | 403 => {}
                            0 if o.error == "connect" => {}
                            _ => s.uncertain_at(o.ts),
                        }
                    }
                }
                "replay" => {
                    let Some(id) = o.session else { continue };
                    let s = self.sessions.entry(id).or_default();
                    match (o.status, o.error.as_str()) {
                        // Theft: the whole session ends (I6).
                        (401, "revoked") => s.end_at(o.tr, o.id, o.op != "expire"),
                        (0, "connect") => {}
                        _ => s.uncertain_at(o.ts),
                    }
                }
                "bind" => {
                    let Some(id) = o.session else { continue };
                    let s = self.sessions.entry(id).or_default();
                    match o.status {
                        200 => s.bound = Some((o.ts, o.tr)),
                        // Refused before anything changed.
                        400 | 401 | 409 => {}
                        0 if o.error == "connect" => {}
                        // Lost, or the store's answer was (a frozen Redis
                        // runs the binding when it thaws): the long token
                        // held may name a sid that is gone.
                        _ => s.uncertain_at(o.ts),
                    }
                }
                "verify" | "list" | "refresh" => {
                    let Some(id) = o.session else { continue };
                    let s = self.sessions.entry(id).or_default();
                    // A request that may have rotated the long token but
                    // whose answer never came: the client's token may be
                    // the rotated-away one now.
                    if o.status == 0 && o.error != "connect" && o.variant != "short" {
                        s.uncertain_at(o.ts);
                    }
                    if o.burst != 0 && o.rotated {
                        let b = bursts.entry(o.burst).or_insert((id, 0));
                        b.1 += 1;
                    }
                }
                _ => {}
            }
        }
        // A burst whose members got more than one new long token: the
        // client kept one of them, and which one the store holds is not
        // known.
        for (_, (id, rotated)) in bursts {
            if rotated > 1
                && let Some(first) = self.order.iter().find(|o| o.session == Some(id) && o.burst != 0)
            {
                let t = first.ts;
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.uncertain_at(t);
                }
            }
        }
    }

    /// No outage (or its settling) overlaps the request.
    fn healthy(&self, o: &Op) -> bool {
        self.outages.iter().all(|&(a, b)| !(o.ts < b + SETTLE && o.tr > a))
    }

    /// The outage the request lies inside, past the breaker's opening.
    fn inside_outage(&self, o: &Op) -> Option<(f64, f64)> {
        self.outages
            .iter()
            .copied()
            .find(|&(a, b)| o.ts > a + BREAKER && o.tr < b)
    }

    /// The outage overlapping `t`, if any.
    fn outage_at(&self, t: f64) -> Option<(f64, f64)> {
        self.outages.iter().copied().find(|&(a, b)| a <= t && t <= b)
    }

    /// When the node process that served `o` started.
    fn node_start(&self, o: &Op) -> f64 {
        self.starts
            .get(&o.node)
            .and_then(|v| v.iter().copied().filter(|&t| t <= o.ts).reduce(f64::max))
            .unwrap_or(0.0)
    }

    fn context(&self, session: Option<u64>, op: u64) -> Vec<u64> {
        let Some(s) = session.and_then(|id| self.sessions.get(&id)) else {
            return vec![op];
        };
        let mut c: Vec<u64> = s.ops.iter().copied().filter(|&i| i <= op).collect();
        if let Some((_, e, _)) = s.end {
            c.push(e);
        }
        c.extend(s.pending.iter().map(|p| p.2));
        c.sort_unstable();
        c.dedup();
        if c.len() > 12 {
            let keep_first = c[0];
            let tail = c.split_off(c.len() - 10);
            c = std::iter::once(keep_first).chain(tail).collect();
        }
        c
    }

    fn violate(&mut self, invariant: &'static str, o: &Op, what: String) {
        let context = self.context(o.session, o.id);
        self.violations.push(Violation {
            invariant,
            op: o.id,
            what,
            context,
        });
    }

    /// Runs every rule; the violations are in `self.violations`.
    pub fn check(&mut self) {
        for o in self.order.clone() {
            match o.op.as_str() {
                "verify" | "refresh" => self.check_verify(o),
                "prebind" => self.check_prebind(o),
                "list" => self.check_list(o),
                "replay" => self.check_replay(o),
                "login" | "issue" => self.check_login(o),
                _ => self.check_any(o),
            }
        }
    }

    fn check_any(&mut self, o: &Op) {
        if o.status >= 500 && self.healthy(o) {
            self.violate(
                "I2",
                o,
                format!("{} answered {} while the store answered", o.op, o.status),
            );
        }
    }

    fn check_login(&mut self, o: &Op) {
        if o.answered() && !o.ok() && self.healthy(o) && self.node_start(o) + SETTLE < o.ts {
            self.violate(
                "I2",
                o,
                format!("{} refused ({} {}) while the store answered", o.op, o.status, o.error),
            );
        }
    }

    /// Whether the session's end was one node `o.node` could not have
    /// heard of when it fell back on crypto: made right before the outage
    /// (its broadcast still under way) or while the node was catching up.
    fn end_unheard(&self, o: &Op, end: f64) -> bool {
        let Some((a, _)) = self.outage_at(o.ts) else {
            return false;
        };
        end > a - PROPAGATION || self.node_start(o) > a - SETTLE
    }

    fn check_verify(&mut self, o: &Op) {
        let Some(s) = o.session.and_then(|id| self.sessions.get(&id)) else {
            return;
        };
        let found = if o.ok() {
            self.judge_accept(o, s)
        } else if o.answered() {
            self.judge_refusal(o, s)
        } else {
            Vec::new()
        };
        for (inv, what) in found {
            self.violate(inv, o, what);
        }
    }

    /// An accepted verify: was there a reason to refuse it?
    fn judge_accept(&self, o: &Op, s: &Session) -> Vec<(&'static str, String)> {
        let mut found = Vec::new();
        if o.path == "ended" {
            return self.judge_refusal(o, s);
        }
        let healthy = self.healthy(o);
        let started = self.node_start(o);
        let strict = o.variant == "strict";
        if o.op == "verify"
            && o.path != "short"
            && let Some((_, bound)) = s.bound
            && o.ts > bound
        {
            found.push((
                "I8",
                format!(
                    "a device-bound session's long token alone answered by the {} path",
                    o.path
                ),
            ));
        }
        if strict && o.path != "long" {
            found.push(("I3", format!("strict verify answered from the {} path", o.path)));
        }
        if healthy && o.path == "fallback" {
            found.push(("I2", "accepted on the crypto fallback while the store answered".into()));
        }
        if let Some((a, _)) = self.inside_outage(o) {
            if strict {
                found.push(("I3", "strict verify accepted while the store was unreachable".into()));
            }
            if o.path == "fallback" && started > a {
                found.push((
                    "I3",
                    "a node started during the outage accepted a long token on crypto alone".into(),
                ));
            }
        }
        if let Some((end, _, heard)) = s.end
            && o.ts > end
        {
            let bound = match o.path.as_str() {
                "long" => 0.0,
                // A session the store dropped by itself (idle expiry) was
                // never revoked: the fallback judges its token's lifetimes.
                "fallback" if !heard => f64::INFINITY,
                "short" if healthy && started + SETTLE < end => PROPAGATION,
                "short" => self.info.short_ttl + PROPAGATION,
                // The fallback: only a revocation the node cannot have heard.
                _ if self.end_unheard(o, end) => f64::INFINITY,
                _ => PROPAGATION,
            };
            if o.ts > end + bound {
                let between = self.outages.iter().any(|&(a, b)| a > end && b < o.ts);
                found.push((
                    if between { "I4" } else { "I1" },
                    format!(
                        "session ended at {end:.0} ms accepted {:.0} ms later on the {} path (node {})",
                        o.ts - end,
                        o.path,
                        o.node
                    ),
                ));
            }
        }
        for &(node, t, _) in &s.pending {
            let replayed_by = self.outage_at(t).map_or(t, |(_, b)| b) + SETTLE;
            if o.ts > t && (o.node == node || o.ts > replayed_by) {
                let by = if o.node == node {
                    "the node that took it"
                } else {
                    "another node after the store returned"
                };
                found.push((
                    "I4",
                    format!("pending logout from {t:.0} ms not enforced by {by} ({} path)", o.path),
                ));
            }
        }
        if let Some(&r) = self.retired.get(&o.kid_long)
            && o.ts > r + self.info.key_reload + PROPAGATION
        {
            found.push((
                "I5",
                format!("long token of key {} accepted after its retirement", o.kid_long),
            ));
        }
        found
    }

    /// A refused or failed verify: only what a valid session may expect.
    fn judge_refusal(&self, o: &Op, s: &Session) -> Vec<(&'static str, String)> {
        let mut found = Vec::new();
        let healthy = self.healthy(o);
        let started = self.node_start(o);
        let retired_before = self.retired.get(&o.kid_long).is_some_and(|&r| r < o.tr + PROPAGATION);
        // A bound session's long token alone is refused by design (I8).
        let proof_required = o.error == "proof_required" && s.bound.is_some_and(|(sent, _)| sent < o.tr);
        let live = s.live(o.ts, o.tr) && !retired_before && o.variant != "short" && !o.cancelled && !proof_required;
        if healthy && o.status >= 500 {
            found.push(("I2", format!("verify answered {} while the store answered", o.status)));
        } else if healthy && live && started + SETTLE < o.ts {
            found.push((
                "I2",
                format!(
                    "valid session refused ({} {}) while the store answered",
                    o.status, o.error
                ),
            ));
        }
        if let Some((a, _)) = self.inside_outage(o)
            && live
            && o.variant != "strict"
            && started + SETTLE < a
            && o.status == 503
        {
            found.push((
                "I3",
                "valid session refused during an outage under fallback = crypto".into(),
            ));
        }
        found
    }

    fn check_list(&mut self, o: &Op) {
        if !o.ok() {
            self.check_any(o);
            return;
        }
        for sid in &o.listed {
            let Some(&owner) = self.sid_owner.get(sid) else {
                continue;
            };
            let Some(s) = self.sessions.get(&owner) else { continue };
            if let Some((end, _, _)) = s.end
                && o.ts > end
            {
                let what = format!("session {owner} (sid {sid}) ended at {end:.0} ms still listed");
                let context = self.context(Some(owner), o.id);
                self.violations.push(Violation {
                    invariant: "I1",
                    op: o.id,
                    what,
                    context,
                });
            }
        }
    }

    /// The long token from before a binding: worthless once the binding
    /// was acknowledged — at once by the store (its sid is gone), and on
    /// the fallback once the binding's revocation could reach the node.
    fn check_prebind(&mut self, o: &Op) {
        let Some(s) = o.session.and_then(|id| self.sessions.get(&id)) else {
            return;
        };
        let Some((_, bound)) = s.bound else { return };
        if !o.ok() || o.ts < bound {
            self.check_any(o);
            return;
        }
        let late = match o.path.as_str() {
            "fallback" => o.ts > bound + PROPAGATION && !self.end_unheard(o, bound),
            _ => true,
        };
        if late {
            self.violate(
                "I8",
                o,
                format!(
                    "the long token from before the binding ({bound:.0} ms) accepted by the {} path",
                    o.path
                ),
            );
        }
    }

    fn check_replay(&mut self, o: &Op) {
        if o.ok() && self.healthy(o) {
            self.violate(
                "I6",
                o,
                "a rotated-away long token was accepted after its grace while the store answered".into(),
            );
        }
    }

    /// A violation printed with the operations that led to it.
    pub fn describe(&self, v: &Violation) -> String {
        let mut out = format!("VIOLATION {} at op {}: {}\n", v.invariant, v.op, v.what);
        for id in &v.context {
            if let Some(o) = self.ops.get(id) {
                let mark = if *id == v.op { ">" } else { " " };
                out.push_str(&format!(
                    "  {mark} #{:<7} {:>9.0}..{:<9.0} node {} {} {} session {:?} user {} -> {} {} {}{}\n",
                    o.id,
                    o.ts,
                    o.tr,
                    o.node,
                    o.op,
                    o.variant,
                    o.session,
                    o.user,
                    o.status,
                    o.error,
                    o.path,
                    if o.cancelled { " (cancelled)" } else { "" }
                ));
            }
        }
        for &(a, b) in &self.outages {
            if let Some(o) = self.ops.get(&v.op)
                && a < o.tr
                && b + SETTLE * 4.0 > o.ts - 30_000.0
            {
                out.push_str(&format!("    store unreachable {a:.0}..{b:.0}\n"));
            }
        }
        out
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

/// Which sessions the history ever saw live, for the summary.
pub fn distinct_users(history: &[Rec]) -> usize {
    history
        .iter()
        .filter_map(|r| match r {
            Rec::Op(o) => Some(o.user.as_str()),
            _ => None,
        })
        .collect::<HashSet<_>>()
        .len()
}
