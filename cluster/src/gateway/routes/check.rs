//! The routing state's invariants, checked by the tests after every step.

use super::{Phase, Routes, MAX_HELD};

impl<S: Clone> Routes<S> {
    /// Checks the state's invariants (tests): the counters match the sessions, and each
    /// phase has what it needs.
    pub fn check(&self) -> Result<(), String> {
        let open = self.sessions.values().filter(|s| s.conn.is_some()).count() as u64;
        let held: u64 = self.sessions.values().map(|s| s.held.len() as u64).sum();
        if (open, held) != (self.counters.sessions, self.counters.held) {
            return Err(format!(
                "{open} open and {held} held, counted {} and {}",
                self.counters.sessions, self.counters.held
            ));
        }
        for (id, s) in &self.sessions {
            let holding = matches!(s.phase, Phase::Login | Phase::Handoff { .. });
            if s.phase != Phase::New && s.player.is_none() {
                return Err(format!("session {id} in {:?} without a player", s.phase));
            }
            if !holding && !s.held.is_empty() {
                return Err(format!("session {id} holds packets in {:?}", s.phase));
            }
            if s.held.len() > MAX_HELD {
                return Err(format!("session {id} holds {}", s.held.len()));
            }
            if s.conn.is_none() && !matches!(s.phase, Phase::Handoff { .. }) {
                return Err(format!("a closed session {id} kept in {:?}", s.phase));
            }
        }
        Ok(())
    }
}
