//! The queue half of the port contract: post/get, timeouts, shutdown, the concurrency value,
//! LIFO wake, `blocking`, timers. Every test runs on both backends.

mod common;

use cport_testkit::per_backend;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use common::{next, port};
use cport::{Backend, Op};

per_backend!(
    posts_from_one_thread_come_out_in_order,
    posts_from_8_threads_are_delivered_exactly_once,
    get_times_out_with_nothing,
    shutdown_wakes_every_waiter,
    concurrency_1_bounds_threads_in_handlers,
    concurrency_2_bounds_threads_in_handlers,
    blocking_lends_the_slot_to_another_worker,
    // Windows releases the most recent waiter first; Wine 8's port releases the first.
    #[cfg_attr(
        wine,
        ignore = "Wine's completion port wakes its waiters first-in-first-out (Windows: LIFO)"
    )]
    most_recently_parked_waiter_is_woken_first,
    busy_handler_does_not_hold_back_io_completions,
    get_many_takes_a_batch,
    timers_fire_in_deadline_order_and_never_early,
    cancelled_timer_never_fires,
    thread_exiting_in_a_handler_gives_its_slot_back,
    no_wakeup_is_lost_in_a_burst_of_posts,
    a_busy_submitters_own_completion_reaches_an_idle_worker,
    an_earlier_timer_set_while_every_thread_waits_fires_on_time,
    posted_messages_are_delivered_once_with_their_value,
    posted_messages_still_queued_are_dropped_at_shutdown,
    before_submit_runs_in_the_pass_at_least_every_16_passes_and_before_waiting,
    an_operation_started_by_before_submit_is_submitted_before_the_worker_waits,
);

fn posts_from_one_thread_come_out_in_order(b: Backend) {
    let port = port(b, 1);
    for i in 0..10_000u64 {
        port.post(7, i as usize, i).unwrap();
    }
    for i in 0..10_000u64 {
        let c = next(&port);
        assert!(matches!(c.op, Op::Post));
        assert_eq!((c.key, c.user, c.result.unwrap()), (7, i, i as usize));
    }
    assert!(port.get(Some(Duration::ZERO)).unwrap().is_none());
}

fn posts_from_8_threads_are_delivered_exactly_once(b: Backend) {
    const PRODUCERS: u64 = 8;
    const EACH: u64 = 100_000;
    let port = port(b, 2);
    let seen: Arc<Vec<AtomicUsize>> =
        Arc::new((0..PRODUCERS * EACH).map(|_| AtomicUsize::new(0)).collect());
    let taken = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let (port, seen, taken) = (port.clone(), seen.clone(), taken.clone());
            std::thread::spawn(move || {
                while let Ok(c) = port.get(None) {
                    let c = c.expect("no timeout was asked for");
                    seen[c.user as usize].fetch_add(1, Ordering::Relaxed);
                    assert_eq!(c.key, c.user / EACH);
                    taken.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let port = port.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    port.post(p, 0, p * EACH + i).unwrap();
                }
            })
        })
        .collect();
    for t in producers {
        t.join().unwrap();
    }
    let give_up = Instant::now() + Duration::from_secs(60);
    while taken.load(Ordering::Relaxed) < (PRODUCERS * EACH) as usize && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(5));
    }
    port.shutdown();
    for t in consumers {
        t.join().unwrap();
    }
    let lost = seen
        .iter()
        .filter(|n| n.load(Ordering::Relaxed) == 0)
        .count();
    let doubled = seen
        .iter()
        .filter(|n| n.load(Ordering::Relaxed) > 1)
        .count();
    assert_eq!((lost, doubled), (0, 0), "lost, doubled");
}

fn get_times_out_with_nothing(b: Backend) {
    let port = port(b, 1);
    let t0 = Instant::now();
    assert!(port
        .get(Some(Duration::from_millis(100)))
        .unwrap()
        .is_none());
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(100),
        "returned early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "returned far too late: {waited:?}"
    );
    let mut out = Vec::new();
    assert_eq!(
        port.get_many(&mut out, 8, Some(Duration::from_millis(10))),
        Ok(0)
    );
}

fn shutdown_wakes_every_waiter(b: Backend) {
    let port = port(b, 2);
    let waiters: Vec<_> = (0..6)
        .map(|_| {
            let port = port.clone();
            std::thread::spawn(move || port.get(None).map(|c| c.is_some()))
        })
        .collect();
    let give_up = Instant::now() + Duration::from_secs(10);
    while port.stats().waiting < 6 && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(port.stats().waiting, 6);
    port.shutdown();
    for w in waiters {
        assert_eq!(w.join().unwrap(), Err(cport::Closed));
    }
    assert_eq!(port.get(None).unwrap_err(), cport::Closed);
    assert!(port.post(0, 0, 0).is_err());
}

/// 8 worker threads, `n` slots: the number of threads inside a handler never exceeds `n`,
/// and does reach it.
fn concurrency_bounds_threads_in_handlers(b: Backend, n: usize) {
    let port = port(b, n);
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    const ITEMS: usize = 400;
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (port, inside, most, handled) =
                (port.clone(), inside.clone(), most.clone(), handled.clone());
            std::thread::spawn(move || {
                while let Ok(c) = port.get(None) {
                    assert!(c.is_some());
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_micros(500));
                    inside.fetch_sub(1, Ordering::SeqCst);
                    handled.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for i in 0..ITEMS {
        port.post(0, 0, i as u64).unwrap();
    }
    let give_up = Instant::now() + Duration::from_secs(60);
    while handled.load(Ordering::SeqCst) < ITEMS && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(5));
    }
    port.shutdown();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(handled.load(Ordering::SeqCst), ITEMS);
    assert_eq!(
        most.load(Ordering::SeqCst),
        n,
        "most threads seen inside handlers"
    );
}

fn concurrency_1_bounds_threads_in_handlers(b: Backend) {
    concurrency_bounds_threads_in_handlers(b, 1);
}

fn concurrency_2_bounds_threads_in_handlers(b: Backend) {
    concurrency_bounds_threads_in_handlers(b, 2);
}

/// Concurrency 1, two workers: the first blocks (inside `blocking`) until the second has
/// handled another completion — possible only if `blocking` lent it the slot.
fn blocking_lends_the_slot_to_another_worker(b: Backend) {
    let port = port(b, 1);
    let (tx, rx) = mpsc::channel::<u64>();
    let rx = Arc::new(parking_lot::Mutex::new(rx));
    let inside = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (port, tx, rx, inside) = (port.clone(), tx.clone(), rx.clone(), inside.clone());
            std::thread::spawn(move || {
                let mut result = None;
                while let Ok(Some(c)) = port.get(None) {
                    match c.user {
                        1 => {
                            let got = port
                                .blocking(|| rx.lock().recv_timeout(Duration::from_secs(10)).ok());
                            result = Some(got == Some(2));
                        }
                        2 => {
                            // Count threads inside handlers (outside `blocking`).
                            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                            tx.send(2).unwrap();
                            inside.fetch_sub(1, Ordering::SeqCst);
                        }
                        _ => return result,
                    }
                }
                result
            })
        })
        .collect();
    port.post(0, 0, 1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    port.post(0, 0, 2).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    port.post(0, 0, 3).unwrap();
    port.post(0, 0, 3).unwrap();
    let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(
        results.contains(&Some(true)),
        "the blocked worker never saw the other one run: {results:?}"
    );
}

/// Three threads park one after another; posts wake them most-recent-first.
fn most_recently_parked_waiter_is_woken_first(b: Backend) {
    let port = port(b, 8);
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for name in ["first", "second", "third"] {
        let (p, tx) = (port.clone(), tx.clone());
        let before = port.stats().waiting;
        threads.push(std::thread::spawn(move || {
            let c = p.get(Some(Duration::from_secs(20))).unwrap();
            tx.send((name, c.map(|c| c.user))).unwrap();
        }));
        let give_up = Instant::now() + Duration::from_secs(10);
        while port.stats().waiting == before && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Let it settle into its wait.
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut order = Vec::new();
    for i in 0..3 {
        port.post(0, 0, i).unwrap();
        let (name, user) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(user, Some(i));
        order.push(name);
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(order, ["third", "second", "first"]);
}

/// Two workers; one is stuck in a handler until the other has handled an I/O completion
/// that arrives while it is stuck. The receive is started by the test's main thread.
fn busy_handler_does_not_hold_back_io_completions(b: Backend) {
    assert_eq!(
        io_while_a_worker_is_stuck(b, false),
        Ok(true),
        "the I/O completion waited behind the busy handler"
    );
}

/// Runs two workers; one takes a post and is stuck in its handler (not via `blocking`) until
/// a receive's completion was handled, or 2 s. With `stuck_submits`, the stuck worker itself
/// starts that receive (so on io_uring its task work runs in the stuck thread). Returns
/// whether the completion was handled by the other worker, or the timeout.
fn io_while_a_worker_is_stuck(
    b: Backend,
    stuck_submits: bool,
) -> Result<bool, mpsc::RecvTimeoutError> {
    use std::io::Write;
    let port = port(b, 2);
    let (mut client, server) = common::tcp_pair();
    let sock = Arc::new(port.associate(server, 5).unwrap());
    if !stuck_submits {
        sock.recv(Vec::with_capacity(64), 0);
    }
    let (stuck_tx, stuck_rx) = mpsc::channel::<()>();
    let (io_tx, io_rx) = mpsc::channel::<std::thread::ThreadId>();
    let io_rx = Arc::new(parking_lot::Mutex::new(io_rx));
    let barrier = Arc::new(Barrier::new(2));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (port, sock, stuck_tx, io_tx, io_rx, barrier) = (
                port.clone(),
                sock.clone(),
                stuck_tx.clone(),
                io_tx.clone(),
                io_rx.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                barrier.wait();
                let mut verdict = None;
                while let Ok(Some(c)) = port.get(None) {
                    match c.op {
                        Op::Post if c.user == 1 => {
                            if stuck_submits {
                                sock.recv(Vec::with_capacity(64), 0);
                                port.submit();
                            }
                            stuck_tx.send(()).unwrap();
                            let got = io_rx.lock().recv_timeout(Duration::from_millis(2000));
                            verdict = Some(got.map(|id| id != std::thread::current().id()));
                        }
                        Op::Recv(buf) => {
                            assert_eq!(buf, b"ping");
                            io_tx.send(std::thread::current().id()).unwrap();
                        }
                        _ => return verdict,
                    }
                }
                verdict
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    port.post(0, 0, 1).unwrap();
    stuck_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // Let the other worker settle into its wait, then send.
    std::thread::sleep(Duration::from_millis(20));
    client.write_all(b"ping").unwrap();
    loop {
        std::thread::sleep(Duration::from_millis(10));
        if port.stats().active == 0 {
            port.post(0, 0, 9).unwrap();
            port.post(0, 0, 9).unwrap();
            break workers
                .into_iter()
                .filter_map(|w| w.join().unwrap())
                .next()
                .unwrap();
        }
    }
}

fn get_many_takes_a_batch(b: Backend) {
    let port = port(b, 1);
    for i in 0..10 {
        port.post(1, 0, i).unwrap();
    }
    let mut out = Vec::new();
    assert_eq!(port.get_many(&mut out, 4, None), Ok(4));
    assert_eq!(port.get_many(&mut out, 100, None), Ok(6));
    let users: Vec<u64> = out.iter().map(|c| c.user).collect();
    assert_eq!(users, (0..10).collect::<Vec<_>>());
}

fn timers_fire_in_deadline_order_and_never_early(b: Backend) {
    let port = port(b, 1);
    let t0 = Instant::now();
    let delays = [50u64, 10, 30, 20, 40, 10];
    for (i, d) in delays.iter().enumerate() {
        port.post_after(Duration::from_millis(*d), 3, i as u64)
            .unwrap();
    }
    let mut fired = Vec::new();
    for _ in 0..delays.len() {
        let c = next(&port);
        assert!(matches!(c.op, Op::Timer(_)));
        assert_eq!(c.key, 3);
        let at = t0.elapsed();
        let due = Duration::from_millis(delays[c.user as usize]);
        assert!(
            at >= due,
            "timer {} fired at {at:?}, before {due:?}",
            c.user
        );
        fired.push(c.user);
    }
    // Deadline order; equal deadlines in the order they were set.
    assert_eq!(fired, [1, 5, 3, 2, 4, 0]);
    assert_eq!(port.stats().timers, 0);
}

fn cancelled_timer_never_fires(b: Backend) {
    let port = port(b, 1);
    let doomed = port.post_after(Duration::from_millis(20), 0, 1).unwrap();
    let never = port.post_after(Duration::MAX, 0, 3).unwrap();
    assert!(port.cancel_timer(never));
    let kept = port.post_after(Duration::from_millis(60), 0, 2).unwrap();
    assert!(port.cancel_timer(doomed));
    assert!(
        !port.cancel_timer(doomed),
        "second cancel of the same timer"
    );
    let c = next(&port);
    assert_eq!(c.user, 2);
    assert!(matches!(c.op, Op::Timer(id) if id == kept));
    assert!(!port.cancel_timer(kept), "cancel after it fired");
    assert!(port
        .get(Some(Duration::from_millis(100)))
        .unwrap()
        .is_none());
}

/// A thread that dies holding a slot (concurrency 1) must not starve the port.
fn thread_exiting_in_a_handler_gives_its_slot_back(b: Backend) {
    let port = port(b, 1);
    port.post(0, 0, 1).unwrap();
    let p = port.clone();
    std::thread::spawn(move || {
        let c = p.get(None).unwrap().unwrap();
        assert_eq!(c.user, 1);
        // Exits without calling get again.
    })
    .join()
    .unwrap();
    port.post(0, 0, 2).unwrap();
    let p = port.clone();
    let other = std::thread::spawn(move || p.get(Some(Duration::from_secs(5))).unwrap());
    assert_eq!(other.join().unwrap().map(|c| c.user), Some(2));
}

/// A producer posts in bursts while one consumer drains with `get_many`: the consumer must
/// never sit in `get` while completions are ready (a lost wake-up; this once happened when a
/// submission-queue view wrote its stale tail back after its lock was released).
fn no_wakeup_is_lost_in_a_burst_of_posts(b: Backend) {
    for _ in 0..5 {
        const ITEMS: u64 = 200_000;
        let port = port(b, 1);
        let p = port.clone();
        let producer = std::thread::spawn(move || {
            for i in 0..ITEMS {
                p.post(0, 0, i).unwrap();
            }
        });
        let mut out = Vec::with_capacity(64);
        let mut taken = 0;
        while taken < ITEMS {
            out.clear();
            // Items are posted without pause: a call that runs to its deadline slept through
            // a wake-up (the poller is only woken by the posts).
            let t0 = Instant::now();
            let n = port
                .get_many(&mut out, 64, Some(Duration::from_secs(3)))
                .unwrap();
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "get_many slept to its deadline with {:?}",
                port.stats()
            );
            taken += n as u64;
        }
        producer.join().unwrap();
    }
}

/// The worker that started a receive (and so, on io_uring, runs its task work) is stuck in a
/// handler when the data arrives: the other, idle worker must still get the completion.
fn a_busy_submitters_own_completion_reaches_an_idle_worker(b: Backend) {
    assert_eq!(
        io_while_a_worker_is_stuck(b, true),
        Ok(true),
        "the completion of the stuck worker's receive waited for it"
    );
}

/// Three threads wait; a timer is set for 2 s, then one for 20 ms: the earlier one fires on
/// time (the alarm is moved earlier while every thread waits), each fires once.
fn an_earlier_timer_set_while_every_thread_waits_fires_on_time(b: Backend) {
    let port = port(b, 3);
    let (tx, rx) = mpsc::channel();
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (p, tx) = (port.clone(), tx.clone());
            std::thread::spawn(move || {
                while let Ok(Some(c)) = p.get(Some(Duration::from_secs(5))) {
                    if matches!(c.op, Op::Post) {
                        return;
                    }
                    tx.send((c.user, Instant::now())).unwrap();
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    port.post_after(Duration::from_millis(2000), 0, 2).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let t1 = Instant::now();
    port.post_after(Duration::from_millis(20), 0, 1).unwrap();
    let (user, at) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(user, 1);
    assert!(at >= t1 + Duration::from_millis(20), "fired early");
    assert!(
        at < t1 + Duration::from_millis(1000),
        "the earlier timer waited for the later one: {:?}",
        at - t1
    );
    let (user, at) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(user, 2);
    assert!(at >= t0 + Duration::from_millis(2000), "fired early");
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "a timer fired twice"
    );
    for _ in 0..3 {
        port.post(0, 0, 0).unwrap();
    }
    for t in threads {
        t.join().unwrap();
    }
}

/// `post_message` from other threads (a DB pool's pattern): every value comes back exactly
/// once, with its key and user value, through `get` on the workers.
fn posted_messages_are_delivered_once_with_their_value(b: Backend) {
    #[derive(Debug, PartialEq)]
    struct Row {
        id: u64,
        name: String,
    }
    const EACH: u64 = 5_000;
    let port = port(b, 2);
    let producers: Vec<_> = (0..4u64)
        .map(|p| {
            let port = port.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let id = p * EACH + i;
                    let row = Row {
                        id,
                        name: format!("p{id}"),
                    };
                    port.post_message(p, id, row).unwrap();
                }
            })
        })
        .collect();
    let mut seen = vec![false; (4 * EACH) as usize];
    for _ in 0..4 * EACH {
        let c = next(&port);
        assert_eq!(c.result.as_ref().unwrap(), &0);
        let Op::Message(m) = c.op else {
            panic!("not a message: {:?}", c.op)
        };
        assert!(m.is::<Row>() && !m.is::<String>());
        let m = m.downcast::<String>().expect_err("a Row is not a String");
        let row: Row = m.downcast().unwrap();
        assert_eq!((row.id, c.key), (c.user, c.user / EACH));
        assert_eq!(row.name, format!("p{}", row.id));
        assert!(
            !std::mem::replace(&mut seen[row.id as usize], true),
            "twice: {row:?}"
        );
    }
    for t in producers {
        t.join().unwrap();
    }
    assert!(port.get(Some(Duration::ZERO)).unwrap().is_none());
}

/// A message never taken is dropped when the port shuts down (no leak), and one posted after
/// shutdown is refused and dropped at once.
fn posted_messages_still_queued_are_dropped_at_shutdown(b: Backend) {
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let port = port(b, 1);
    for i in 0..100 {
        port.post_message(1, i, Counted(dropped.clone())).unwrap();
    }
    let c = next(&port);
    drop(c);
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    port.shutdown();
    assert!(port.get(Some(Duration::ZERO)).is_err());
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        100,
        "the 99 queued ones dropped at shutdown"
    );
    assert!(port.post_message(1, 0, Counted(dropped.clone())).is_err());
    assert_eq!(dropped.load(Ordering::SeqCst), 101);
    drop(port);
    assert_eq!(dropped.load(Ordering::SeqCst), 101);
}

thread_local! {
    /// Handler passes of this thread since the `before_submit` hook last ran on it.
    static PASSES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// The `before_submit` hook of a `Pool` worker runs on that worker, inside its handler pass,
/// at least every 16 passes while completions keep coming ready at once, and once more after
/// the last one, before the worker waits: a layer that gathers work over passes (the server
/// layer's sends) never leaves any of it behind a waiting worker.
fn before_submit_runs_in_the_pass_at_least_every_16_passes_and_before_waiting(b: Backend) {
    const POSTS: u32 = 100;
    // (worker thread, passes since the last run) for every run of the hook.
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let r2 = runs.clone();
    let port = cport::Port::builder()
        .backend(b)
        .ignore_env()
        .concurrency(1)
        .before_submit(move || {
            let passes = PASSES.replace(0);
            r2.lock()
                .unwrap()
                .push((std::thread::current().id(), passes));
        })
        .build()
        .unwrap();
    // All ready before the worker starts: it goes from one to the next without waiting.
    for i in 0..POSTS {
        port.post(1, 0, i as u64).unwrap();
    }
    let worker = Arc::new(std::sync::Mutex::new(None));
    let w2 = worker.clone();
    let pool = cport::Pool::spawn(&port, 1, move |_, _| {
        *w2.lock().unwrap() = Some(std::thread::current().id());
        PASSES.set(PASSES.get() + 1);
    })
    .unwrap();
    let deadline = Instant::now() + cport_testkit::TIMEOUT;
    loop {
        let total: u32 = runs.lock().unwrap().iter().map(|r| r.1).sum();
        if total == POSTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hook saw {total} of {POSTS} passes; runs: {:?}",
            runs.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let worker = worker.lock().unwrap().expect("the worker ran");
    let runs = runs.lock().unwrap().clone();
    assert!(
        runs.iter().all(|r| r.0 == worker),
        "hook ran off the worker"
    );
    assert!(
        runs.iter().all(|r| r.1 <= 16),
        "more than 16 passes between two runs of the hook: {runs:?}"
    );
    pool.shutdown();
}

/// What the hook starts goes to the kernel with the worker's own operations, even when the
/// worker then finds nothing to do and waits: a send started in the hook reaches the peer,
/// and its completion reaches a handler.
fn an_operation_started_by_before_submit_is_submitted_before_the_worker_waits(b: Backend) {
    use std::io::Read;
    let (mut client, server) = common::tcp_pair();
    client
        .set_read_timeout(Some(cport_testkit::TIMEOUT))
        .unwrap();
    let sock: Arc<std::sync::Mutex<Option<cport::Socket>>> = Default::default();
    let want = Arc::new(AtomicUsize::new(0));
    let (s2, w2) = (sock.clone(), want.clone());
    let port = cport::Port::builder()
        .backend(b)
        .ignore_env()
        .concurrency(1)
        .before_submit(move || {
            let n = w2.swap(0, Ordering::SeqCst);
            if n > 0 {
                let s = s2.lock().unwrap();
                s.as_ref().unwrap().send(vec![n as u8; n], 7);
            }
        })
        .build()
        .unwrap();
    *sock.lock().unwrap() = Some(port.associate(server, 3).unwrap());
    let (tx, rx) = mpsc::channel();
    let w3 = want.clone();
    let pool = cport::Pool::spawn(&port, 1, move |_, c| match c.op {
        // Each post asks for a send of `value` bytes; the hook starts it.
        Op::Post => {
            w3.fetch_add(c.user as usize, Ordering::SeqCst);
        }
        Op::Send(_) => tx.send(c.result.map_err(|e| e.kind())).unwrap(),
        _ => {}
    })
    .unwrap();
    for n in [5u64, 9, 1] {
        port.post(1, 0, n).unwrap();
        let mut got = vec![0u8; n as usize];
        client
            .read_exact(&mut got)
            .expect("the hook's send reached the peer");
        assert_eq!(got, vec![n as u8; n as usize]);
        let done = rx
            .recv_timeout(cport_testkit::TIMEOUT)
            .expect("its completion");
        assert_eq!(done, Ok(n as usize));
    }
    drop(sock.lock().unwrap().take());
    pool.shutdown();
}
