//! Where a step's time goes, per op kind (`bench step --profile`): while a
//! thread profiles, every op the tape records is charged the wall time since
//! the previous record on that thread (its forward computation runs just
//! before it is recorded), and every backward call its own time, with the
//! bytes its operands and result take. Off, it costs one thread-local read
//! per op.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

/// What one op kind took over the profiled span.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpTime {
    pub calls: u64,
    pub forward_s: f64,
    pub backward_s: f64,
    /// Bytes read and written by the forward calls (operands and result).
    pub forward_bytes: f64,
}

struct State {
    last: Instant,
    ops: BTreeMap<&'static str, OpTime>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// Starts profiling on this thread (clearing what was there).
pub fn start() {
    STATE.with(|s| {
        *s.borrow_mut() = Some(State {
            last: Instant::now(),
            ops: BTreeMap::new(),
        })
    });
}

/// Stops profiling on this thread and returns the table, by op kind.
pub fn stop() -> BTreeMap<&'static str, OpTime> {
    STATE.with(|s| s.borrow_mut().take().map(|st| st.ops).unwrap_or_default())
}

/// Restarts the forward clock (before a step's first op, so time spent
/// outside ops is not charged to it).
pub fn mark() {
    STATE.with(|s| {
        if let Some(st) = s.borrow_mut().as_mut() {
            st.last = Instant::now();
        }
    });
}

/// Charges the time since the previous op to `name`: host work that is no
/// tape op (the input's noise and patchify, say), so the next op is not
/// charged with it.
pub fn charge(name: &'static str) {
    forward(name, 0.0);
}

pub(super) fn enabled() -> bool {
    STATE.with(|s| s.borrow().is_some())
}

/// An op of kind `name` was recorded, moving `bytes`.
pub(super) fn forward(name: &'static str, bytes: f64) {
    STATE.with(|s| {
        if let Some(st) = s.borrow_mut().as_mut() {
            let now = Instant::now();
            let e = st.ops.entry(name).or_default();
            e.calls += 1;
            e.forward_s += now.duration_since(st.last).as_secs_f64();
            e.forward_bytes += bytes;
            st.last = now;
        }
    });
}

/// A backward call of kind `name` took `secs`.
pub(super) fn backward(name: &'static str, secs: f64) {
    STATE.with(|s| {
        if let Some(st) = s.borrow_mut().as_mut() {
            st.ops.entry(name).or_default().backward_s += secs;
            st.last = Instant::now();
        }
    });
}
