//! The wake handshakes of the per-delivery poll paths: how a task that polls shared state is
//! woken when another thread changes it, without a lost wakeup and without an atomic
//! read-modify-write on a poll that finds nothing new.
//!
//! # Invariants
//!
//! * **The slot keeps its waker.** A [`TaskWaker`] holds the waker of the polling task's last
//!   registration from that registration until a later one replaces it. A wake clones it and
//!   wakes the clone; it never takes it out. So a poll registers only when its waker differs
//!   from the one it registered last ([`LastWaker`]): one comparison, no atomic write.
//!   (Taking the waker out on wake, as `AtomicWaker` does, is what lost wakeups before: a poll
//!   that skipped registering found the slot emptied by a wake it had raced with.)
//! * **Register, then read.** The polling side registers before it reads the state; the waking
//!   side writes the state before it wakes. The slot's lock orders the two: either the wake
//!   finds the new waker, or the registration happens after the wake's write and the read
//!   that follows it sees the write.
//! * **The slot keeps the waker alive.** Because the slot holds a clone, a task's waker can't be
//!   freed and its address reused by another task's while it is registered, so comparing
//!   addresses ([`LastWaker`]) never mistakes a new waker for the registered one.
//!
//! Lock order: a [`TaskWaker`]'s lock is a leaf; nothing is called while it is held (the waker
//! is woken after the lock is released, so a waker that polls inline can't deadlock).
//!
//! Every handshake here is model-checked with loom (`loom_` tests; see `src/sync.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::task::{Context, Poll, RawWakerVTable, Wake, Waker};

use crate::sync::{AtomicBool, AtomicU8, Mutex};

/// The waker of the one task that polls some shared state, for other threads to wake it. See
/// the [module docs](self) for the protocol.
#[derive(Default)]
pub(crate) struct TaskWaker {
    /// The waker of the polling task's last registration; `None` before the first.
    slot: Mutex<Option<Waker>>,
}

impl TaskWaker {
    /// Wakes the task that registered last, if any. Call after writing the state it reads.
    pub(crate) fn wake(&self) {
        let waker = self.slot.lock().clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The identity of the waker a poll registered last (what `Waker::will_wake` compares), so
/// that the next poll can skip registering the same one again. Atomics only so that its owner
/// stays `Send` and `Sync`: just the polling task touches it, so it is never raced (and stays
/// on `std` under the model checker).
#[derive(Default)]
pub(crate) struct LastWaker(AtomicPtr<()>, AtomicPtr<RawWakerVTable>);

impl LastWaker {
    /// Makes sure `task` holds `waker`: registers it unless it is the one registered last.
    /// Call before reading the state `task` is woken for.
    pub(crate) fn register(&self, task: &TaskWaker, waker: &Waker) {
        if !self.is(waker) {
            // The old waker is dropped after the lock is released (the statement's guard
            // goes first).
            let old = task.slot.lock().replace(waker.clone());
            self.set(waker);
            drop(old);
        }
    }

    /// Whether `waker` is the one registered last.
    fn is(&self, waker: &Waker) -> bool {
        std::ptr::eq(self.0.load(Ordering::Relaxed), waker.data())
            && std::ptr::eq(self.1.load(Ordering::Relaxed), waker.vtable())
    }

    fn set(&self, waker: &Waker) {
        self.0.store(waker.data().cast_mut(), Ordering::Relaxed);
        self.1.store(
            std::ptr::from_ref(waker.vtable()).cast_mut(),
            Ordering::Relaxed,
        );
    }
}

/// A one-shot request to a polling task (a drain asking a connection to close): set once by
/// anyone, seen by the task's next poll, waking it.
#[derive(Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    task: TaskWaker,
}

impl Signal {
    /// Raises the signal and wakes the task that polled it last.
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.task.wake();
    }

    /// Ready once the signal is raised. `last` is the polling side's registration.
    pub(crate) fn poll_raised(&self, last: &LastWaker, cx: &Context<'_>) -> Poll<()> {
        last.register(&self.task, cx.waker());
        if self.raised.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Branches of a task's `select!` that are polled only after their own waker fired (for the
/// WebSocket pump: the drain request, the socket's read half and the heartbeat timer), so a
/// wake for something else (a delivery) doesn't poll each of them only to hear it is still
/// pending: on a cold connection each such poll is mostly cache misses, 5,000 of them per
/// message at scale. Each branch's inner poll gets the branch's own waker, which marks the
/// branch and wakes the task; the marks of up to 8 branches share one word.
pub(crate) struct Gates<const N: usize> {
    state: Arc<GateState>,
    /// One waker per branch, by index.
    wakers: [Waker; N],
    /// The task waker last registered in `state`.
    registered: LastWaker,
}

struct GateState {
    /// Bit `1 << branch`: the branch's inner future or stream may be ready, poll it. Set at
    /// first, on the branch's wake, after a ready poll (a stream may have more buffered, with
    /// no wake to come) and by [`Gates::open`]; cleared just before the branch is polled, so a
    /// wake during that poll marks it again. Atomic: branch wakers set it from any thread.
    woken: AtomicU8,
    task: TaskWaker,
}

/// One branch's waker.
struct Branch {
    state: Arc<GateState>,
    bit: u8,
}

impl Wake for Branch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.state.woken.fetch_or(self.bit, Ordering::Release);
        self.state.task.wake();
    }
}

impl<const N: usize> Gates<N> {
    /// Gates for `N` branches (at most 8), every one marked, so each is polled once to
    /// register its waker.
    pub(crate) fn new() -> Self {
        const { assert!(N <= 8, "the marks share one byte") };
        let all = u8::try_from((1u16 << N) - 1).unwrap_or(u8::MAX);
        let state = Arc::new(GateState {
            woken: AtomicU8::new(all),
            task: TaskWaker::default(),
        });
        let wakers = std::array::from_fn(|index| {
            Waker::from(Arc::new(Branch {
                state: Arc::clone(&state),
                bit: 1 << index,
            }))
        });
        Self {
            state,
            wakers,
            registered: LastWaker::default(),
        }
    }

    /// Marks `branch` to be polled next time (its future was replaced or reset).
    pub(crate) fn open(&self, branch: usize) {
        self.state.woken.fetch_or(1 << branch, Ordering::Release);
    }

    /// Polls `inner` with the branch's waker if the branch woke since it last returned
    /// `Pending`. In the common case (a wake for something else, same task) this is one
    /// comparison and one load.
    pub(crate) fn poll<T>(
        &self,
        branch: usize,
        cx: &mut Context<'_>,
        inner: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let bit = 1 << branch;
        self.registered.register(&self.state.task, cx.waker());
        if self.state.woken.load(Ordering::Acquire) & bit == 0 {
            return Poll::Pending;
        }
        self.state.woken.fetch_and(!bit, Ordering::AcqRel);
        let ready = inner(&mut Context::from_waker(&self.wakers[branch]));
        if ready.is_ready() {
            self.state.woken.fetch_or(bit, Ordering::Release);
        }
        ready
    }
}

#[cfg(all(test, not(salvo_realtime_loom)))]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    use super::Gates;

    /// Counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    const A: usize = 0;
    const B: usize = 1;
    const C: usize = 2;

    #[test]
    fn a_gate_polls_its_branch_only_after_the_branch_woke() {
        let task = Arc::new(Count::default());
        let task_waker = Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&task_waker);
        let gates = Gates::<3>::new();
        let polls = Cell::new(0);
        let saved: RefCell<Option<Waker>> = RefCell::new(None);
        let pending = |cx: &mut Context<'_>| {
            polls.set(polls.get() + 1);
            *saved.borrow_mut() = Some(cx.waker().clone());
            Poll::<()>::Pending
        };
        let ready = |_: &mut Context<'_>| {
            polls.set(polls.get() + 1);
            Poll::Ready(())
        };
        // Polled at first, then not again until its waker fires.
        assert!(gates.poll(B, &mut cx, pending).is_pending());
        let b_waker = saved.borrow_mut().take().expect("registered");
        assert!(gates.poll(B, &mut cx, pending).is_pending());
        assert_eq!(polls.get(), 1);
        // The other branches have their own marks.
        assert!(gates.poll(A, &mut cx, pending).is_pending());
        assert_eq!(polls.get(), 2);
        assert!(gates.poll(A, &mut cx, pending).is_pending());
        assert_eq!(polls.get(), 2);
        assert!(gates.poll(C, &mut cx, pending).is_pending());
        assert_eq!(polls.get(), 3);
        // Every branch pending: no mark left.
        assert_eq!(gates.state.woken.load(Ordering::SeqCst), 0);
        assert_eq!(task.0.load(Ordering::SeqCst), 0);
        b_waker.wake_by_ref();
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            1,
            "the wake reaches the task"
        );
        assert!(gates.poll(A, &mut cx, pending).is_pending());
        assert_eq!(polls.get(), 3, "branch A didn't wake");
        assert!(gates.poll(B, &mut cx, pending).is_pending());
        assert_eq!(polls.get(), 4, "branch B did");
        // A ready branch is polled again next time (a stream may have more buffered).
        b_waker.wake_by_ref();
        assert!(gates.poll(B, &mut cx, ready).is_ready());
        assert!(gates.poll(B, &mut cx, pending).is_pending());
        assert_eq!(polls.get(), 6);
        // A second wake with nothing between reaches the task too.
        b_waker.wake_by_ref();
        assert_eq!(task.0.load(Ordering::SeqCst), 3);
        assert!(gates.poll(B, &mut cx, pending).is_pending());
        // With a new task waker, a wake reaches the new one.
        let other = Arc::new(Count::default());
        let other_waker = Waker::from(Arc::clone(&other));
        let mut cx = Context::from_waker(&other_waker);
        assert!(gates.poll(B, &mut cx, pending).is_pending());
        b_waker.wake_by_ref();
        assert_eq!(other.0.load(Ordering::SeqCst), 1);
        assert_eq!(task.0.load(Ordering::SeqCst), 3);
    }
}

/// The model-checked proofs: each handshake, its polling task on one thread and its wakers on
/// others, every interleaving. A lost wakeup shows as loom's deadlock (the polling task parks
/// forever with work to do).
#[cfg(all(test, salvo_realtime_loom))]
mod loom_tests {
    use std::future::poll_fn;
    use std::task::{Context, Poll, Waker};

    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicUsize, Ordering};

    use super::{Gates, LastWaker, Signal, TaskWaker};

    /// A counter bumped by other threads, read by a task that waits for `n`.
    fn wait_for(count: &AtomicUsize, n: usize, poll: impl Fn(&Context<'_>)) {
        loom::future::block_on(poll_fn(|cx| {
            poll(cx);
            if count.load(Ordering::Acquire) >= n {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
    }

    #[test]
    fn loom_task_waker_never_loses_a_wake() {
        loom::model(|| {
            let shared = Arc::new((TaskWaker::default(), AtomicUsize::new(0)));
            let wakers: Vec<_> = (0..2)
                .map(|_| {
                    let shared = Arc::clone(&shared);
                    loom::thread::spawn(move || {
                        shared.1.fetch_add(1, Ordering::Release);
                        shared.0.wake();
                    })
                })
                .collect();
            let last = LastWaker::default();
            wait_for(&shared.1, 2, |cx| last.register(&shared.0, cx.waker()));
            for waker in wakers {
                waker.join().expect("waker thread");
            }
        });
    }

    /// The task's waker changes between polls (the task moved, or another task polls now): a
    /// wake after the change reaches the new waker.
    #[test]
    fn loom_task_waker_follows_a_new_waker() {
        loom::model(|| {
            let shared = Arc::new((TaskWaker::default(), AtomicUsize::new(0)));
            let last = LastWaker::default();
            // A first registration with a waker that is then dropped.
            let first = Waker::noop();
            last.register(&shared.0, first);
            let waker = {
                let shared = Arc::clone(&shared);
                loom::thread::spawn(move || {
                    shared.1.fetch_add(1, Ordering::Release);
                    shared.0.wake();
                })
            };
            wait_for(&shared.1, 1, |cx| last.register(&shared.0, cx.waker()));
            waker.join().expect("waker thread");
        });
    }

    #[test]
    fn loom_signal_wakes_its_task() {
        loom::model(|| {
            let signal = Arc::new(Signal::default());
            let raiser = {
                let signal = Arc::clone(&signal);
                loom::thread::spawn(move || signal.raise())
            };
            let last = LastWaker::default();
            loom::future::block_on(poll_fn(|cx| signal.poll_raised(&last, cx)));
            raiser.join().expect("raiser");
        });
    }

    /// Two branches woken from two threads, each twice; the task polls both until it has seen
    /// every wake's work. A wake lost between a branch's mark and the task shows as a deadlock.
    #[test]
    fn loom_gates_never_lose_a_branch_wake() {
        loom::model(|| {
            let gates = Gates::<2>::new();
            let work = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
            let mut slots: [Option<Waker>; 2] = [None, None];
            // Register each branch's waker (the first poll of each).
            let mut cx = Context::from_waker(Waker::noop());
            for branch in 0..2 {
                let _ = gates.poll(branch, &mut cx, |inner| {
                    slots[branch] = Some(inner.waker().clone());
                    Poll::<()>::Pending
                });
            }
            let threads: Vec<_> = (0..2)
                .map(|branch| {
                    let work = Arc::clone(&work);
                    let waker = slots[branch].take().expect("registered");
                    loom::thread::spawn(move || {
                        work[branch].fetch_add(1, Ordering::Release);
                        waker.wake();
                    })
                })
                .collect();
            let seen = [std::cell::Cell::new(0), std::cell::Cell::new(0)];
            loom::future::block_on(poll_fn(|cx| {
                for branch in 0..2 {
                    let _ = gates.poll(branch, cx, |_| {
                        let now = work[branch].load(Ordering::Acquire);
                        if now > seen[branch].get() {
                            seen[branch].set(now);
                            Poll::Ready(())
                        } else {
                            Poll::Pending
                        }
                    });
                }
                if seen.iter().all(|s| s.get() == 1) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }));
            for thread in threads {
                thread.join().expect("branch thread");
            }
        });
    }
}
