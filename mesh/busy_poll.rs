//! Adaptive busy polling: a runtime thread that runs out of work polls for new I/O for a short
//! while before it goes to sleep.
//!
//! Why: a thread asleep in `epoll_wait` leaves its CPU idle, and on a virtual machine an idle vCPU
//! halts. The peer that then writes to the thread's socket pays for waking it (an inter-processor
//! interrupt through the hypervisor, measured at ~14 µs of the writer's CPU on loopback), and the
//! halted vCPU takes time to resume. One call in flight pays that twice per call (the request, then
//! the reply), which is most of a loopback call's latency. A thread that is still polling when the
//! request or reply arrives sees it without being woken.
//!
//! How: tokio calls `before_park` when a worker thread has nothing left to run. The thread then
//! asks the kernel, without blocking and without consuming anything, whether the runtime's epoll
//! instance has events (`poll(2)` on the epoll descriptor, which tokio goes on to read as usual),
//! and whether a task was queued from outside the runtime's threads, yielding the CPU between two
//! asks so that any other runnable thread goes first, until one of them is so or its *window* has
//! passed. Then tokio parks it as it always does. Timers are not looked at: one can fire up to a
//! window late, which is why the window is bounded ([`MAX`]).
//!
//! The window adapts per thread, like the kernel's haltpoll governor ([`next_window`]): when a
//! thread slept longer than its window but no longer than the maximum, the window doubles (from
//! [`START`]); when it slept longer than the maximum, the window halves, and below [`START`] it
//! closes. So a thread whose next event comes soon (a reply to the call it just sent, the next call
//! of a busy client) polls for it, and one whose events are sparse stops polling after a few sleeps.
//! A thread that stays idle polls once, for at most its window, and then sleeps.
//!
//! tokio does not expose the runtime's epoll descriptor; it is the epoll instance that building the
//! runtime adds to `/proc/self/fd` (tokio keeps one duplicate of it). If that cannot be told (not
//! Linux, or another thread created an epoll instance at the same moment), the runtime is built
//! without busy polling and [`BusyPoll::is_active`] says so.
//!
//! [`BusyPoll::build_runtime`] is where every exemesh command's runtime is built, so it also sets
//! the runtime's size (`--threads`) and turns tokio's LIFO slot off ([`BusyPoll::LIFO_SLOT_OFF`]):
//! a task left in a preempted worker's slot cannot be stolen and waits a scheduler tick.

use std::cell::Cell;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The window a thread's polling opens with, once a sleep shows its events come sooner than the
/// maximum.
pub const START: Duration = Duration::from_micros(10);

/// The longest window the command line accepts: timers can fire up to one window late.
pub const MAX: Duration = Duration::from_millis(1);

thread_local! {
    /// This thread's window and, from `before_park` to `after_unpark`, since when it has been idle.
    static STATE: Cell<(Duration, Option<Instant>)> = const { Cell::new((Duration::ZERO, None)) };
}

/// Busy polling for one runtime: its epoll descriptor, the longest window, and what it caught.
#[derive(Debug, Clone)]
pub struct BusyPoll {
    epoll: Arc<AtomicI32>,
    max: Duration,
    caught: Arc<AtomicU64>,
}

impl BusyPoll {
    /// Builds a multi-threaded tokio runtime (all drivers enabled, `threads` worker threads) whose
    /// worker threads poll for up to `max` before sleeping, as the module describes; a zero `max`
    /// turns busy polling off. The returned handle tells whether it is on and what it caught.
    pub fn build_runtime(
        max: Duration,
        threads: NonZeroUsize,
    ) -> io::Result<(tokio::runtime::Runtime, BusyPoll)> {
        let poll = BusyPoll {
            epoll: Arc::new(AtomicI32::new(-1)),
            max,
            caught: Arc::new(AtomicU64::new(0)),
        };
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all().worker_threads(threads.get());
        // A task in a worker's LIFO slot cannot be stolen: when the OS preempts that worker, the
        // task waits for it to run again (a scheduler tick on a busy machine). Without the slot,
        // every woken task goes to a queue the other workers steal from (.cargo/config.toml).
        #[cfg(tokio_unstable)]
        builder.disable_lifo_slot();
        let before = match eventpoll_fds() {
            Ok(fds) if !max.is_zero() => fds,
            _ => return Ok((builder.build()?, poll)),
        };
        let (park, unpark) = (poll.clone(), poll.clone());
        builder
            .on_thread_park(move || park.before_park())
            .on_thread_unpark(move || unpark.after_unpark());
        let runtime = builder.build()?;
        if let Ok(after) = eventpoll_fds() {
            let new: Vec<RawFd> = after
                .into_iter()
                .filter(|fd| !before.contains(fd))
                .collect();
            if let Some(fd) = one_instance(&new) {
                poll.epoll.store(fd, Ordering::Release);
            }
        }
        Ok((runtime, poll))
    }

    /// Whether the runtime's LIFO slot is off (exemesh built with `--cfg tokio_unstable`, as
    /// `.cargo/config.toml` sets).
    pub const LIFO_SLOT_OFF: bool = cfg!(tokio_unstable);

    /// Whether the runtime's threads poll before they sleep.
    pub fn is_active(&self) -> bool {
        self.epoll.load(Ordering::Acquire) >= 0
    }

    /// How many times a thread's polling saw work before its window ended, so that the thread was
    /// not put to sleep and woken up for it.
    pub fn caught(&self) -> u64 {
        self.caught.load(Ordering::Relaxed)
    }

    /// Called by tokio when this worker thread has nothing to run: polls for up to its window.
    fn before_park(&self) {
        let epoll = self.epoll.load(Ordering::Acquire);
        let now = Instant::now();
        let (window, _) = STATE.get();
        STATE.set((window, Some(now)));
        if epoll < 0 || window.is_zero() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let metrics = runtime.metrics();
        let queued = || metrics.global_queue_depth() > 0;
        if poll_until(epoll, queued, now + window) {
            self.caught.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Called by tokio when this worker thread has work again: adapts its window to how long it
    /// went without.
    fn after_unpark(&self) {
        let (window, since) = STATE.get();
        let next = since.map_or(window, |since| {
            next_window(window, since.elapsed(), self.max)
        });
        STATE.set((next, None));
    }
}

/// The window after a thread with window `window` went `idle` without work (the haltpoll rule):
/// kept if the work came within it, doubled (at least [`START`], at most `max`) if it came within
/// `max`, halved otherwise, and closed below [`START`].
pub fn next_window(window: Duration, idle: Duration, max: Duration) -> Duration {
    if idle <= window {
        window
    } else if idle <= max {
        (window * 2).clamp(START, max)
    } else if window / 2 >= START {
        window / 2
    } else {
        Duration::ZERO
    }
}

/// Asks whether `epoll` has events or `queued` holds until one does or `until` has passed; true if
/// one did (or if the descriptor cannot be polled, so that the thread goes on to park as usual).
fn poll_until(epoll: RawFd, queued: impl Fn() -> bool, until: Instant) -> bool {
    loop {
        let mut fd = libc::pollfd {
            fd: epoll,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `fd` is one valid pollfd for the duration of the call; a timeout of 0 never blocks.
        if unsafe { libc::poll(&mut fd, 1, 0) } != 0 || queued() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::yield_now();
    }
}

/// The first of `fds` if they all refer to one epoll instance: duplicates of a descriptor list the
/// same registrations in `/proc/self/fdinfo`.
fn one_instance(fds: &[RawFd]) -> Option<RawFd> {
    let registrations = |fd: RawFd| -> Option<String> {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        Some(
            info.lines()
                .filter(|line| line.starts_with("tfd:"))
                .collect(),
        )
    };
    let (&first, rest) = fds.split_first()?;
    let seen = registrations(first)?;
    rest.iter()
        .all(|&fd| registrations(fd).as_ref() == Some(&seen))
        .then_some(first)
}

/// The descriptors of this process that are epoll instances.
fn eventpoll_fds() -> io::Result<Vec<RawFd>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let is_epoll = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.as_os_str() == "anon_inode:[eventpoll]");
        if let Some(fd) = is_epoll
            .then(|| entry.file_name().to_str()?.parse().ok())
            .flatten()
        {
            fds.push(fd);
        }
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    #[allow(
        clippy::assertions_on_constants,
        reason = "what is checked is the build's configuration"
    )]
    fn the_lifo_slot_is_off() {
        assert!(
            BusyPoll::LIFO_SLOT_OFF,
            "built without --cfg tokio_unstable (.cargo/config.toml sets it; a RUSTFLAGS variable \
             replaces it): the runtime keeps its LIFO slot and the mesh its 4-5 ms p99 tail"
        );
    }

    #[test]
    fn the_window_opens_grows_and_stops_at_the_maximum() {
        let max = Duration::from_micros(100);
        let opened = next_window(Duration::ZERO, Duration::from_micros(50), max);
        assert_eq!(opened, START);
        let grown = next_window(opened, Duration::from_micros(50), max);
        assert_eq!(grown, START * 2);
        assert_eq!(
            next_window(Duration::from_micros(80), Duration::from_micros(90), max),
            max
        );
    }

    #[test]
    fn the_window_is_kept_while_it_catches_the_work() {
        let window = Duration::from_micros(40);
        assert_eq!(next_window(window, Duration::from_micros(3), MS), window);
        assert_eq!(next_window(window, window, MS), window);
    }

    /// An epoll instance watching a fresh eventfd, and the eventfd.
    fn epoll_with_eventfd() -> (RawFd, RawFd) {
        // SAFETY: plain descriptor-creating syscalls; the results are checked.
        unsafe {
            let epoll = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            let event = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
            assert!(epoll >= 0 && event >= 0);
            let mut interest = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                u64: 0,
            };
            assert_eq!(
                libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, event, &mut interest),
                0
            );
            (epoll, event)
        }
    }

    /// Closes descriptors a test opened.
    fn close(fds: &[RawFd]) {
        for &fd in fds {
            // SAFETY: each descriptor was opened by the calling test and is not used after this.
            unsafe { libc::close(fd) };
        }
    }

    #[test]
    fn polling_sees_an_event_and_leaves_it_for_the_runtime() {
        let (epoll, event) = epoll_with_eventfd();
        let never = || false;
        let soon = Instant::now() + 5 * MS;
        assert!(
            !poll_until(epoll, never, soon),
            "an empty epoll instance looked ready"
        );
        assert!(Instant::now() >= soon, "polling ended before its window");
        // SAFETY: writes 8 bytes from a live u64 to the eventfd.
        let one = 1u64;
        assert_eq!(unsafe { libc::write(event, (&raw const one).cast(), 8) }, 8);
        assert!(poll_until(epoll, never, Instant::now() + 10_000 * MS));
        // The event is still there for the runtime's `epoll_wait`.
        let mut ready = [libc::epoll_event { events: 0, u64: 0 }];
        // SAFETY: one epoll_event of room, timeout 0.
        assert_eq!(
            unsafe { libc::epoll_wait(epoll, ready.as_mut_ptr(), 1, 0) },
            1
        );
        close(&[event, epoll]);
    }

    #[test]
    fn polling_stops_at_once_when_work_is_queued() {
        let (epoll, event) = epoll_with_eventfd();
        let start = Instant::now();
        assert!(poll_until(epoll, || true, start + 10_000 * MS));
        assert!(start.elapsed() < 5_000 * MS);
        close(&[event, epoll]);
    }

    #[test]
    fn duplicates_are_one_instance_and_two_instances_are_not() {
        let (epoll, event) = epoll_with_eventfd();
        let (other, other_event) = epoll_with_eventfd();
        // SAFETY: duplicating a descriptor this test opened.
        let dup = unsafe { libc::fcntl(epoll, libc::F_DUPFD_CLOEXEC, 0) };
        assert!(dup >= 0);
        assert_eq!(one_instance(&[epoll, dup]), Some(epoll));
        assert_eq!(one_instance(&[epoll, other]), None);
        assert_eq!(one_instance(&[]), None);
        let found = eventpoll_fds().expect("/proc/self/fd");
        assert!([epoll, dup, other].iter().all(|fd| found.contains(fd)));
        assert!(!found.contains(&event));
        close(&[dup, epoll, event, other, other_event]);
    }

    #[test]
    fn long_sleeps_halve_the_window_and_then_close_it() {
        let max = Duration::from_micros(100);
        let long = Duration::from_millis(5);
        assert_eq!(next_window(max, long, max), max / 2);
        assert_eq!(next_window(START * 3, long, max), START * 3 / 2);
        assert_eq!(next_window(START, long, max), Duration::ZERO);
        assert_eq!(next_window(Duration::ZERO, long, max), Duration::ZERO);
    }
}
