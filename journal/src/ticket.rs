//! Durability tickets: [`Pending`] resolves when its record's batch has been fsynced.
//!
//! All records of one group-commit batch share one [`BatchSlot`]: the writer completes it once,
//! which wakes every blocking waiter and every async waiter (their wakers), so completing a batch
//! costs the same however many records it holds.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::Seq;
use crate::error::{Failure, JournalError};

/// How a batch ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// Written and fsynced.
    Durable,
    /// A write or fsync failed; the journal is poisoned.
    Failed(Arc<Failure>),
    /// The writer stopped without committing the batch.
    Closed,
}

/// The completion shared by every record of one batch.
///
/// Blocking waiters park in [`OnceLock::wait`] (a futex on Linux): completing the batch wakes
/// them all at once and none of them has to take a lock to see the outcome, so a batch of many
/// waiting appenders does not turn into a convoy on a mutex.
#[derive(Default)]
pub(crate) struct BatchSlot {
    outcome: OnceLock<Outcome>,
    /// Wakers of async waiters, drained when the outcome is set.
    wakers: Mutex<Vec<Waker>>,
}

impl BatchSlot {
    fn wakers(&self) -> MutexGuard<'_, Vec<Waker>> {
        self.wakers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves every ticket of the batch (the first outcome wins).
    pub(crate) fn complete(&self, outcome: Outcome) {
        if self.outcome.set(outcome).is_err() {
            return;
        }
        // A poller registers its waker under this lock and re-checks the outcome under it, so
        // it either sees the outcome or its waker is drained here.
        let wakers = std::mem::take(&mut *self.wakers());
        for waker in wakers {
            waker.wake();
        }
    }
}

/// Completes its batch with [`Outcome::Closed`] if dropped before the writer completed it (so a
/// writer that stops early or panics never leaves a waiter hanging).
pub(crate) struct BatchGuard(pub(crate) Arc<BatchSlot>);

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.0.complete(Outcome::Closed);
    }
}

fn resolve(seq: Seq, outcome: &Outcome) -> Result<Seq, JournalError> {
    match outcome {
        Outcome::Durable => Ok(seq),
        Outcome::Failed(failure) => Err(failure.to_error()),
        Outcome::Closed => Err(JournalError::Closed),
    }
}

/// A record that has been queued and given its sequence number, but may not be durable yet.
///
/// Resolve it either by blocking with [`Pending::wait`] or by awaiting it (it is a [`Future`]
/// that works on any executor). Either way the result is `Ok(seq)` once the record is on disk
/// and fsynced, or the error that prevented that. Dropping a `Pending` does not cancel the
/// append: the record is written either way.
#[must_use = "a Pending resolves when the record is durable; dropping it does not cancel the append"]
pub struct Pending {
    /// The record's sequence number.
    pub seq: Seq,
    slot: Arc<BatchSlot>,
    registered: Option<Waker>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Pending {
    pub(crate) fn new(seq: Seq, slot: Arc<BatchSlot>) -> Self {
        Pending {
            seq,
            slot,
            registered: None,
        }
    }

    /// Blocks until the record is durable; returns its sequence number.
    pub fn wait(self) -> Result<Seq, JournalError> {
        resolve(self.seq, self.slot.outcome.wait())
    }

    /// Whether the record's batch has completed (durably or not), without blocking.
    pub fn is_resolved(&self) -> bool {
        self.slot.outcome.get().is_some()
    }

    /// Whether the record is durable (its batch was written and fsynced), without blocking.
    pub fn is_durable(&self) -> bool {
        matches!(self.slot.outcome.get(), Some(Outcome::Durable))
    }
}

impl Future for Pending {
    type Output = Result<Seq, JournalError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(outcome) = this.slot.outcome.get() {
            return Poll::Ready(resolve(this.seq, outcome));
        }
        let mut wakers = this.slot.wakers();
        if let Some(outcome) = this.slot.outcome.get() {
            return Poll::Ready(resolve(this.seq, outcome));
        }
        let already = this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if !already {
            wakers.push(cx.waker().clone());
            this.registered = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}
