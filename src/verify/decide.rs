//! The one place where a long token is accepted, refused or judged by the
//! fallback policy.
//!
//! Everything else on the long path (the breaker, single flight, the
//! confirmation cache) only produces the inputs of [`decide`]: what the
//! store said about this request ([`StoreAnswer`]), whether the verify is
//! strict, the fallback policy, whether the revocation feed ever caught up
//! and whether this node confirmed the session recently. An optimisation
//! that wants to change what is accepted has to change this function, and
//! its table of tests says what it may not change.
//!
//! The rule this module exists for: **only the store's own verdict or a real
//! outage decides**. A real outage is the breaker being open, or the store
//! call this request made (or shared) failing with a connection error or a
//! timeout. There is no input for "another request's call went away": a
//! request whose shared answer never came asks the store itself
//! (`Verifier::ask_store`), so a cancelled request can never open the
//! fallback for anybody.

use crate::config::Fallback;
use crate::store::VerifyOutcome;
use crate::tokens::Sid;
use crate::verify::Reject;

/// What the store said about one long token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreAnswer {
    /// The breaker is open: the store was not asked.
    BreakerOpen,
    /// The store answered, through this request's call or the call it
    /// shared.
    Verdict(VerifyOutcome),
    /// The store call this request made or shared failed with a connection
    /// error or a timeout.
    Unreachable,
    /// The store answered this session's call with an error of its own (a
    /// key of the wrong type, a malformed record): not an outage.
    Refused,
}

/// What happens to the request.
#[derive(Debug)]
pub enum Decision {
    /// Accepted by the store (`path: long`); `successor` when the store
    /// rotated the session.
    Accept {
        /// The session's new sid, after a rotation.
        successor: Option<Sid>,
    },
    /// Accepted without the store (`path: fallback`).
    Fallback,
    /// Refused.
    Refuse(Reject),
}

const STRICT: &str = "the session store is unreachable and this verify is strict (it never falls back)";
const OFF: &str = "the session store is unreachable and store.fallback = off";
const UNJUDGED: &str = "the session store is unreachable and this session cannot be judged without it";

/// The decision. `confirmed_recently` is asked only under the policies that
/// need it (`known`, and `crypto` before the revocation feed caught up).
pub fn decide(
    answer: &StoreAnswer,
    strict: bool,
    policy: Fallback,
    caught_up: bool,
    confirmed_recently: impl FnOnce() -> bool,
) -> Decision {
    match answer {
        StoreAnswer::Verdict(VerifyOutcome::Valid { .. }) => Decision::Accept { successor: None },
        StoreAnswer::Verdict(VerifyOutcome::Rotated { successor, .. }) => Decision::Accept {
            successor: Some(*successor),
        },
        StoreAnswer::Verdict(VerifyOutcome::NotFound) => Decision::Refuse(Reject::UnknownSession),
        StoreAnswer::Verdict(VerifyOutcome::Expired) => Decision::Refuse(Reject::Expired),
        StoreAnswer::Verdict(VerifyOutcome::Theft { .. }) => Decision::Refuse(Reject::Revoked),
        // A bound session without its key's proof: no downgrade.
        StoreAnswer::Verdict(VerifyOutcome::KeyMismatch) => Decision::Refuse(Reject::ProofRequired),
        StoreAnswer::Refused => Decision::Refuse(Reject::Internal),
        StoreAnswer::BreakerOpen | StoreAnswer::Unreachable => {
            if strict {
                return Decision::Refuse(Reject::Unavailable(STRICT));
            }
            let known = || {
                if confirmed_recently() {
                    Decision::Fallback
                } else {
                    Decision::Refuse(Reject::Unavailable(UNJUDGED))
                }
            };
            match policy {
                Fallback::Off => Decision::Refuse(Reject::Unavailable(OFF)),
                Fallback::Known => known(),
                // A node that never caught up on revocations knows none: it
                // accepts only what it confirmed itself.
                Fallback::Crypto if !caught_up => known(),
                Fallback::Crypto => Decision::Fallback,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::UnixMs;

    fn valid() -> StoreAnswer {
        StoreAnswer::Verdict(VerifyOutcome::Valid {
            idle_expires: UnixMs(1),
        })
    }

    fn code(d: &Decision) -> &'static str {
        match d {
            Decision::Accept { successor: None } => "long",
            Decision::Accept { successor: Some(_) } => "long+rotated",
            Decision::Fallback => "fallback",
            Decision::Refuse(r) => r.code(),
        }
    }

    /// The store's verdict decides, whatever the policy, strictness, feed
    /// and confirmations: a verdict never falls back.
    #[test]
    fn a_store_verdict_decides_under_every_policy() {
        let rotated = StoreAnswer::Verdict(VerifyOutcome::Rotated {
            successor: Sid([7; 16]),
            idle_expires: UnixMs(1),
        });
        let rows = [
            (valid(), "long"),
            (rotated, "long+rotated"),
            (StoreAnswer::Verdict(VerifyOutcome::NotFound), "unknown_session"),
            (StoreAnswer::Verdict(VerifyOutcome::Expired), "expired"),
            (
                StoreAnswer::Verdict(VerifyOutcome::Theft {
                    revoked: vec![Sid([1; 16])],
                }),
                "revoked",
            ),
            (StoreAnswer::Verdict(VerifyOutcome::KeyMismatch), "proof_required"),
            (StoreAnswer::Refused, "internal"),
        ];
        for (answer, want) in rows {
            for policy in [Fallback::Crypto, Fallback::Known, Fallback::Off] {
                for strict in [false, true] {
                    for caught_up in [false, true] {
                        for confirmed in [false, true] {
                            let d = decide(&answer, strict, policy, caught_up, || confirmed);
                            assert_eq!(
                                code(&d),
                                want,
                                "{answer:?} strict={strict} {policy:?} caught_up={caught_up} confirmed={confirmed}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// An outage (breaker open, or this request's call failed): the policy
    /// table of docs/security.md, row by row.
    #[test]
    fn an_outage_follows_the_fallback_policy_exactly() {
        // (policy, strict, caught_up, confirmed) -> decision
        let rows = [
            (Fallback::Crypto, false, true, false, "fallback"),
            (Fallback::Crypto, false, true, true, "fallback"),
            (Fallback::Crypto, false, false, true, "fallback"),
            (Fallback::Crypto, false, false, false, "unavailable"),
            (Fallback::Known, false, true, true, "fallback"),
            (Fallback::Known, false, true, false, "unavailable"),
            (Fallback::Known, false, false, true, "fallback"),
            (Fallback::Known, false, false, false, "unavailable"),
            (Fallback::Off, false, true, true, "unavailable"),
            (Fallback::Off, false, false, false, "unavailable"),
        ];
        for answer in [StoreAnswer::BreakerOpen, StoreAnswer::Unreachable] {
            for (policy, strict, caught_up, confirmed, want) in rows {
                let d = decide(&answer, strict, policy, caught_up, || confirmed);
                assert_eq!(
                    code(&d),
                    want,
                    "{answer:?} {policy:?} caught_up={caught_up} confirmed={confirmed}"
                );
            }
            // Strict never falls back, under any policy.
            for policy in [Fallback::Crypto, Fallback::Known, Fallback::Off] {
                let d = decide(&answer, true, policy, true, || true);
                assert_eq!(code(&d), "unavailable", "strict {answer:?} {policy:?}");
            }
        }
    }

    /// The confirmation cache is consulted only where the policy needs it.
    #[test]
    fn confirmations_are_looked_up_only_when_needed() {
        let asked = std::cell::Cell::new(0);
        let ask = || {
            asked.set(asked.get() + 1);
            true
        };
        decide(&valid(), false, Fallback::Known, true, ask);
        decide(&StoreAnswer::Unreachable, false, Fallback::Crypto, true, ask);
        decide(&StoreAnswer::Unreachable, true, Fallback::Known, true, ask);
        assert_eq!(asked.get(), 0);
        decide(&StoreAnswer::Unreachable, false, Fallback::Known, true, ask);
        assert_eq!(asked.get(), 1);
    }
}
