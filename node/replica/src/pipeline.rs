//! When a leader-follower replica's actions may be carried out while its durable state is
//! written asynchronously (the log written and fsynced on another thread, or in the simulator
//! at a random later step).
//!
//! ```text
//!  replica.take_actions() ──► submit ──► now: carry out at once
//!                                 └────► a batch to write (seq n), with what waits for it
//!  writer: batches 1..=n durable ──► durable(n) ──► replica.persisted(..), then what waited
//!                                                     (and hard_state_persisted() once no
//!                                                      term or vote is left to write)
//! ```
//!
//! The contract of [`Action`]: a batch that changes the term or vote, truncates, or restores a
//! snapshot is carried out only once its durable state is written (a vote must survive a crash). Here that wait
//! does not stop the replica: later batches are stepped meanwhile, and what waits is released
//! in order — later batches' actions too, behind it. Replies to the leader (`AppendReply`) are
//! the exception unless a snapshot is being restored: they go at once, since they claim only
//! what is durable, and held for a slow write they silence the follower for the leader's
//! check-quorum (see [`Pipeline::submit`] for why a term not yet written may be named in
//! them). Any other batch goes out at once: neither
//! a leader (it counts itself toward W and the commit only once [`Replica::persisted`] says
//! so, Raft thesis §10.2.1) nor a follower (its acknowledgements claim only what `persisted`
//! reported) claims anything not yet durable.

use std::collections::VecDeque;

use crate::leader_follower::{Action, LogIndex, Message, Replica};

/// A batch being written, and what waits for it.
#[derive(Debug)]
struct InFlight {
    seq: u64,
    /// The replica's last index when it was submitted: durable once the batch is.
    last: LogIndex,
    /// Truncations before it was submitted: a later one may have replaced entries up to
    /// `last`, and then the batch being durable says nothing about them.
    generation: u64,
    deferred: Vec<Action>,
    /// It holds a term or vote.
    hard: bool,
    /// It restores a snapshot: no reply to the leader may overtake it (a reply after it claims
    /// the snapshot's index, durable only with it).
    restore: bool,
}

/// Orders a replica's actions around asynchronous writes. See the module documentation.
#[derive(Debug)]
pub struct Pipeline {
    writes: bool,
    submitted: u64,
    generation: u64,
    inflight: VecDeque<InFlight>,
}

impl Pipeline {
    /// `writes`: whether batches with durable state are written at all (false in memory:
    /// everything is carried out at once).
    pub fn new(writes: bool) -> Pipeline {
        Pipeline {
            writes,
            submitted: 0,
            generation: 0,
            inflight: VecDeque::new(),
        }
    }

    /// Takes one batch of `replica`'s actions. Returns what to carry out now, in order, and —
    /// when the batch holds durable state to write — its number: the caller writes the
    /// batch's `PersistHardState`, `Truncate` and `PersistEntries` (after every earlier batch)
    /// and reports with [`Pipeline::durable`].
    ///
    /// Replies to the leader go now unless a snapshot is being restored, even behind a term or
    /// vote being written. They claim as durable only what [`Replica::persisted`] reported,
    /// which a later batch cannot make durable before an earlier one, so a reply claiming an
    /// entry of term t comes from a node whose term t is written. A reply claiming nothing new
    /// may name a term a crash takes back; the leader counts it only as a sign of life and as a
    /// read-index confirmation, and the latter is safe: no leader of an earlier term can commit
    /// after this leader was elected (its voters, a majority, wrote their votes first), and a
    /// leader of a later term needs the vote of one of the majority that confirmed, which none
    /// had given when it replied (its term was this leader's then, written or not). Held behind a
    /// slow term or vote (a follower that had campaigned, or learnt a new term from the
    /// leader's first append), they made a new leader step down by check-quorum while every
    /// follower was still writing (seed 33301304 of the slow disk).
    pub fn submit(
        &mut self,
        replica: &mut Replica,
        actions: Vec<Action>,
    ) -> (Vec<Action>, Option<u64>) {
        let risky = actions.iter().any(|a| {
            matches!(
                a,
                Action::PersistHardState(_) | Action::Truncate { .. } | Action::Restore { .. }
            )
        });
        if actions
            .iter()
            .any(|a| matches!(a, Action::Truncate { .. } | Action::Restore { .. }))
        {
            self.generation += 1;
        }
        let records = actions.iter().any(|a| match a {
            Action::PersistHardState(_) | Action::Truncate { .. } | Action::Restore { .. } => true,
            Action::PersistEntries(es) => !es.is_empty(),
            _ => false,
        });
        let early = !risky && self.inflight.iter().all(|f| f.deferred.is_empty());
        let restore = actions_restore(&actions);
        let last = replica.last_index();
        let (now, deferred) = if early {
            (actions, Vec::new())
        } else if self.writes && !restore && !self.inflight.iter().any(|f| f.restore) {
            // Replies to the leader go now (see above): they claim what is durable (a
            // truncation lowered that to where the logs match) and tell the leader this
            // follower is alive.
            actions.into_iter().partition(is_reply)
        } else {
            (Vec::new(), actions)
        };
        let hard = actions_hard(&now) || actions_hard(&deferred);
        if self.writes && records {
            self.submitted += 1;
            self.inflight.push_back(InFlight {
                seq: self.submitted,
                last,
                generation: self.generation,
                deferred,
                hard,
                restore,
            });
            return (now, Some(self.submitted));
        }
        if hard && !self.inflight.iter().any(|f| f.hard) {
            replica.hard_state_persisted(); // in memory: nothing to wait for
        }
        match self.inflight.back_mut() {
            // Nothing to write, but earlier batches are still being written.
            Some(f) => {
                f.deferred.extend(deferred);
                (now, None)
            }
            None => {
                replica.persisted(last);
                let mut all = deferred;
                all.extend(now);
                (all, None)
            }
        }
    }

    /// Batches `..=seq` are durable: tells `replica` and returns what waited for them, in
    /// order. Call [`Replica::take_actions`] afterwards (the replica may have more to do).
    pub fn durable(&mut self, replica: &mut Replica, seq: u64) -> Vec<Action> {
        let mut out = Vec::new();
        while self.inflight.front().is_some_and(|f| f.seq <= seq) {
            let Some(f) = self.inflight.pop_front() else {
                break;
            };
            if f.generation == self.generation {
                replica.persisted(f.last);
            }
            out.extend(f.deferred);
        }
        if !self.inflight.iter().any(|f| f.hard) {
            replica.hard_state_persisted();
        }
        out
    }

    /// Forgets every batch in flight (the writer failed, or the node crashed): nothing that
    /// waited for them happens.
    pub fn clear(&mut self) {
        self.inflight.clear();
    }

    /// Batches submitted and not yet durable.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Actions wait behind a batch being written (a term, vote, truncation or snapshot): what
    /// the replica hands out now would wait too, and be released with them at once.
    pub fn holding(&self) -> bool {
        self.inflight.iter().any(|f| !f.deferred.is_empty())
    }
}

/// A snapshot restored: a reply after it must wait until it is durable (it claims the
/// snapshot's index).
fn actions_restore(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Restore { .. }))
}

fn is_reply(a: &Action) -> bool {
    matches!(
        a,
        Action::Send {
            msg: Message::AppendReply { .. },
            ..
        }
    )
}

fn actions_hard(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::PersistHardState(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;
    use crate::leader_follower::tests::replica;
    use crate::leader_follower::{HardState, Snapshot, Term};

    fn reply(index: u64) -> Action {
        Action::Send {
            to: NodeId::from("n1"),
            msg: Message::AppendReply {
                term: Term(2),
                ok: true,
                index: LogIndex(index),
                read_seq: 0,
            },
        }
    }

    fn vote() -> Action {
        Action::Send {
            to: NodeId::from("n3"),
            msg: Message::Vote {
                term: Term(3),
                granted: true,
            },
        }
    }

    fn truncate() -> Action {
        Action::Truncate {
            from: LogIndex(4),
            removed: Vec::new(),
        }
    }

    fn is(actions: &[Action], want: &[Action]) -> bool {
        actions.len() == want.len()
            && actions
                .iter()
                .zip(want)
                .all(|(a, b)| format!("{a:?}") == format!("{b:?}"))
    }

    fn hard() -> Action {
        Action::PersistHardState(HardState {
            term: Term(3),
            voted_for: Some(2),
        })
    }

    fn restore() -> Action {
        Action::Restore {
            snapshot: Snapshot::default(),
            rolled_back: Vec::new(),
        }
    }

    #[test]
    fn replies_go_ahead_of_a_truncation_or_a_term_being_written_but_not_of_a_snapshot() {
        let mut r = replica(1, 3, HardState::default(), Vec::new());
        let mut p = Pipeline::new(true);
        // A truncation: its reply (claiming only what is durable) goes now.
        let (now, seq) = p.submit(&mut r, vec![truncate(), reply(3)]);
        assert!(is(&now, &[reply(3)]), "{now:?}");
        assert_eq!(seq, Some(1));
        // Behind it, a later batch's reply goes too; anything else waits, in order.
        let (now, _) = p.submit(&mut r, vec![vote(), reply(5)]);
        assert!(is(&now, &[reply(5)]), "{now:?}");
        // A term or vote to write: the reply goes, the rest of its batch waits.
        let (now, _) = p.submit(&mut r, vec![hard(), vote(), reply(6)]);
        assert!(is(&now, &[reply(6)]), "{now:?}");
        // A snapshot to restore: nothing of its batch goes, nor a reply after it.
        let (now, _) = p.submit(&mut r, vec![restore(), reply(7)]);
        assert!(now.is_empty(), "{now:?}");
        let (now, _) = p.submit(&mut r, vec![reply(8)]);
        assert!(now.is_empty(), "{now:?}");
        // As each write is durable, what waited for it goes, in order (a batch with nothing
        // to write waits with the one before it).
        assert!(p.holding(), "a vote waits behind the truncation");
        let released = p.durable(&mut r, 1);
        assert!(is(&released, &[truncate(), vote()]), "{released:?}");
        let released = p.durable(&mut r, 2);
        assert!(is(&released, &[hard(), vote()]), "{released:?}");
        assert!(p.holding());
        let released = p.durable(&mut r, 3);
        assert!(
            is(&released, &[restore(), reply(7), reply(8)]),
            "{released:?}"
        );
        assert!(!p.holding(), "nothing waits once every write is durable");
        // A batch of entries only: nothing waits behind it.
        let (now, _) = p.submit(&mut r, vec![Action::PersistEntries(Vec::new()), reply(9)]);
        assert_eq!(now.len(), 2, "{now:?}");
        assert!(!p.holding());
    }
}
