//! Disabling a user ends their sessions. `users disable NAME` only edits the
//! users file; every running node notices the change (the file is looked at
//! once a second) and ends the user's sessions like a kick: at once on its
//! own revoked cache (so the node refuses them even while Redis is
//! unreachable), and in the store, whose broadcast reaches every other node.
//! A store call that fails is retried on the next tick. Users found disabled
//! when the service starts are handled the same way (the file may have been
//! edited while no node ran).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{Revocation, Store};
use crate::time::Clock;
use crate::tokens::UserId;
use crate::users::UserDb;
use crate::verify::Verifier;

/// How often the users file is looked at for newly disabled users.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Watches `users` and ends the sessions of every user that is disabled.
/// Stop it by aborting the handle.
pub fn spawn_session_ender(
    users: Arc<UserDb>,
    verifier: Arc<Verifier<Store>>,
    clock: Arc<dyn Clock>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Ids whose sessions this process has ended since they were disabled.
        let mut ended: BTreeSet<String> = BTreeSet::new();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let current = users.users();
            let disabled: BTreeSet<String> = current
                .entries()
                .values()
                .filter(|u| u.disabled)
                .map(|u| u.id.clone())
                .collect();
            // Re-enabled users: a later disable ends their sessions again.
            ended.retain(|id| disabled.contains(id));
            for id in disabled.difference(&ended.clone()) {
                let Ok(uid) = UserId::new(id) else { continue };
                let now = clock.now();
                verifier.revoke_locally(&Revocation::User { uid }, now);
                match verifier.revoke_all(uid, now).await {
                    Ok(sids) => {
                        let n = sids.len().to_string();
                        let who = crate::audit::Subject {
                            user: Some(uid.as_str()),
                            ..Default::default()
                        };
                        crate::audit::record("disable", who, Some(&n));
                        ended.insert(id.clone());
                    }
                    Err(e) => tracing::warn!(
                        user = %uid, error = %e,
                        "disabled user: this node refuses the sessions, but the store could not end them; retrying"
                    ),
                }
            }
        }
    })
}
