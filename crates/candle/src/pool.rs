//! [`Pool`]: the reserves of a module's training calls, reused from call to call.

use std::sync::Mutex;

/// The reserves that no call holds. A training call takes one (or a new, empty one) and gives
/// it back when candle drops its graph, so a training loop that drops each step's graph before
/// the next step reuses one reserve (whose buffers the backend resizes, not reallocates, when
/// the shapes repeat). The pool keeps as many reserves as there were calls alive at once at
/// most; [`Pool::clear`] drops them.
pub(crate) struct Pool<R> {
    free: Mutex<Vec<R>>,
}

impl<R: Default> Pool<R> {
    pub(crate) fn new() -> Self {
        Pool { free: Mutex::new(Vec::new()) }
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Vec<R>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free reserve, or a new empty one.
    pub(crate) fn take(&self) -> R {
        self.free().pop().unwrap_or_default()
    }

    /// Gives a reserve back.
    pub(crate) fn put(&self, r: R) {
        self.free().push(r);
    }

    /// The number of free reserves.
    pub(crate) fn len(&self) -> usize {
        self.free().len()
    }

    /// Drops the free reserves.
    pub(crate) fn clear(&self) {
        self.free().clear();
    }
}
