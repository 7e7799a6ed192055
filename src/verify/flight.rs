//! Single flight per session: while a store verify of a session is in
//! flight on this node, later verifies of the same session subscribe to its
//! answer instead of calling the store themselves. No lock is held across
//! an await: the map is touched only to join and to leave, under a plain
//! mutex, and waiting happens on a per-flight watch channel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::StoreAnswer;
use crate::tokens::{Sid, UserId};

/// What the leader's store call answered, for the followers.
pub type Shared = StoreAnswer;

type Key = (UserId, Sid);
type Slot = Arc<watch::Sender<Option<Shared>>>;

/// The flights in progress.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<Key, Slot>>,
}

/// Joining a flight.
pub enum Joined<'a> {
    /// Nobody was calling the store for this session: call it, then
    /// [`Flight::finish`].
    Leader(Flight<'a>),
    /// Someone is: wait on this for the answer.
    Follower(watch::Receiver<Option<Shared>>),
}

/// The leader's handle. Dropping it without finishing (the request was
/// cancelled) ends the flight: followers then stop waiting.
pub struct Flight<'a> {
    flights: &'a Flights,
    key: Key,
    slot: Slot,
}

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Slot>> {
        // Entries are inserted and removed whole: a poisoned map is still
        // consistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leads the flight of session `key`, or follows the one in progress.
    pub fn join(&self, key: Key) -> Joined<'_> {
        let mut map = self.lock();
        if let Some(slot) = map.get(&key) {
            return Joined::Follower(slot.subscribe());
        }
        let slot: Slot = Arc::new(watch::channel(None).0);
        map.insert(key, slot.clone());
        Joined::Leader(Flight {
            flights: self,
            key,
            slot,
        })
    }
}

impl Flight<'_> {
    /// Hands the answer to every follower and ends the flight: the next
    /// verify of the session calls the store again (so a revocation that
    /// landed meanwhile is seen by it).
    pub fn finish(self, answer: Shared) {
        self.slot.send_replace(Some(answer));
        // Drop removes the entry.
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.lock();
        if map.get(&self.key).is_some_and(|s| Arc::ptr_eq(s, &self.slot)) {
            map.remove(&self.key);
        }
        // A leader dropped without an answer (its request was cancelled)
        // closes the channel: followers' `wait_for` returns an error and
        // each asks the store itself (never the fallback).
    }
}
