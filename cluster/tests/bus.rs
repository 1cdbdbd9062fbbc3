//! The bus's promises, against a real `nats-server` (one per test, on a free loopback port:
//! `cport_testkit::nats`). Without `nats-server` these tests say they are skipped and pass;
//! under `scripts/test` (which installs it) they fail instead.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use cport_cluster::bus::{Bus, BusConfig, Inbox, Outbox, BATCH_LIMIT};
use cport_mmo::cluster::wire::{read_header, BatchWriter, Msg, Source, WireError};
use cport_testkit::nats::{nats_server, NatsServer};
use cport_testkit::TIMEOUT;

fn config(url: &str, cluster: &str, me: Source) -> BusConfig {
    BusConfig {
        url: url.to_string(),
        cluster: cluster.to_string(),
        me,
        incarnation: 7,
    }
}

fn bus(server: &NatsServer, cluster: &str, me: Source) -> Bus {
    Bus::connect(config(&server.url, cluster, me), TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {me:?} to {}: {e}", server.url))
}

/// Subscribes `bus` to its inbox; what arrives comes out of the channel.
fn listen(bus: &Bus) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel();
    bus.subscribe(move |payload| {
        let _ = tx.send(payload);
    })
    .expect("subscribe");
    rx
}

/// The next `n` payloads, or a panic saying how many came within `within`.
fn receive(rx: &mpsc::Receiver<Bytes>, n: usize, within: Duration) -> Vec<Bytes> {
    let give_up = Instant::now() + within;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let left = give_up.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(b) => got.push(b),
            Err(_) => panic!("{} of {n} messages within {within:?}", got.len()),
        }
    }
    got
}

/// Nothing more arrives for a while.
fn assert_quiet(rx: &mpsc::Receiver<Bytes>) {
    if let Ok(b) = rx.recv_timeout(Duration::from_millis(200)) {
        panic!("an unexpected message: {b:?}");
    }
}

/// A batch of one `GhostMove` whose `id` and `move_time` say who sent it and its number.
fn numbered(bus: &Bus, to: Source, id: u32, n: u32) -> Bytes {
    let mut w = BatchWriter::new(bus.header(to));
    w.push(&Msg::GhostMove {
        id,
        x: 0,
        y: 0,
        move_time: n,
    });
    w.finish()
}

/// The `(id, move_time)` of a batch made by [`numbered`].
fn number_of(batch: Bytes) -> (u32, u32) {
    let (_, mut r) = read_header(batch).expect("a batch");
    match r.next() {
        Some(Ok(Msg::GhostMove { id, move_time, .. })) => {
            assert!(r.next().is_none(), "one entry");
            (id, move_time)
        }
        other => panic!("not a numbered batch: {other:?}"),
    }
}

#[test]
fn each_threads_batches_arrive_complete_and_in_its_order() {
    let Some(server) = nats_server() else { return };
    const THREADS: u32 = 3;
    const EACH: u32 = 10_000;
    let to = Source::Zone(0);
    let receiver = bus(&server, "order", to);
    let rx = listen(&receiver);
    let sender = bus(&server, "order", Source::Gateway(1));
    thread::scope(|s| {
        for t in 0..THREADS {
            let sender = sender.clone();
            s.spawn(move || {
                for i in 0..EACH {
                    sender.publish(to, numbered(&sender, to, t, i));
                }
            });
        }
    });
    sender.flush(TIMEOUT).expect("flush");

    let total = (THREADS * EACH) as usize;
    let mut next = [0u32; THREADS as usize];
    let mut seqs = HashSet::new();
    for batch in receive(&rx, total, Duration::from_secs(60)) {
        let (h, _) = read_header(batch.clone()).expect("a batch");
        assert_eq!(h.source, Source::Gateway(1));
        assert_eq!(h.incarnation, 7);
        assert!(seqs.insert(h.seq), "seq {} twice", h.seq);
        let (t, i) = number_of(batch);
        assert_eq!(i, next[t as usize], "thread {t}'s batches out of order");
        next[t as usize] += 1;
    }
    assert_eq!(next, [EACH; THREADS as usize]);
    assert_eq!(seqs.len(), total);
    assert_eq!(
        seqs.iter().max(),
        Some(&(total as u64 - 1)),
        "seqs 0..{total}"
    );
    assert_quiet(&rx);

    let out = sender.counters();
    assert_eq!((out.msgs_out, out.errors), (total as u64, 0));
    let got = receiver.counters();
    assert_eq!(got.msgs_in, total as u64);
    assert_eq!(got.bytes_in, out.bytes_out);
}

#[test]
fn an_outbox_shares_messages_under_load_and_every_entry_arrives_once_in_order() {
    let Some(server) = nats_server() else { return };
    let gw = bus(&server, "batching", Source::Gateway(1));
    let gw_rx = listen(&gw);
    let zone = bus(&server, "batching", Source::Zone(2));
    let zone_rx = listen(&zone);
    let sender = bus(&server, "batching", Source::Zone(0));

    // The "port": schedule() queues a completion; the loop below handles the queue every
    // PORT_EVERY pushes, as a busy worker pool would get to it later.
    let due = Arc::new(Mutex::new(Vec::new()));
    let outbox = Outbox::new(sender.clone(), vec![Source::Gateway(1), Source::Zone(2)], {
        let due = due.clone();
        move |i| due.lock().unwrap().push(i)
    });
    assert_eq!(outbox.index(Source::Gateway(1)), Some(0));
    assert_eq!(outbox.index(Source::Zone(2)), Some(1));
    assert_eq!(outbox.index(Source::Zone(9)), None);
    const N: u32 = 10_000;
    const PORT_EVERY: u32 = 97;
    let mut completions = 0;
    let mut run_port = |outbox: &Outbox| {
        let batch = std::mem::take(&mut *due.lock().unwrap());
        completions += batch.len();
        for i in batch {
            outbox.flush(i);
        }
    };
    for i in 0..N {
        if i % 2 == 0 {
            // Runs of 4 values for one session: consecutive ones share a `Send` entry.
            outbox.push_send(1, u64::from(i / 8 % 3), &i.to_le_bytes());
        } else {
            outbox.push(
                Source::Zone(2),
                &Msg::GhostMove {
                    id: 5,
                    x: 1,
                    y: 2,
                    move_time: i,
                },
            );
        }
        if i % PORT_EVERY == PORT_EVERY - 1 {
            run_port(&outbox);
        }
    }
    run_port(&outbox);
    assert_eq!(outbox.pending(), 0);
    sender.flush(TIMEOUT).expect("flush");

    let msgs = sender.counters().msgs_out;
    // One message per destination per round of the port, each flush found a batch.
    assert_eq!(msgs, completions as u64);
    let rounds = u64::from(N / PORT_EVERY + 1);
    assert!(
        msgs <= 2 * rounds,
        "{msgs} NATS messages for {N} entries in {rounds} rounds"
    );

    // The gateway: every value once, in order, each under its session.
    let mut want = (0..N).step_by(2).peekable();
    let mut seq = 0;
    while want.peek().is_some() {
        let batch = receive(&gw_rx, 1, TIMEOUT).remove(0);
        let (h, mut r) = read_header(batch).expect("a batch");
        assert_eq!(
            (h.source, h.seq),
            (Source::Zone(0), seq),
            "batches in seq order"
        );
        seq += 1;
        while let Some(entry) = r.next() {
            let Msg::Send { session, bytes } = entry.expect("an entry") else {
                panic!("not a Send")
            };
            assert_eq!(bytes.len() % 4, 0);
            for v in bytes.chunks(4) {
                let v = u32::from_le_bytes(v.try_into().unwrap());
                assert_eq!(Some(v), want.next(), "gateway entries out of order");
                assert_eq!(session, u64::from(v / 8 % 3));
            }
        }
    }
    // The zone: every move once, in order.
    let mut want = (1..N).step_by(2).peekable();
    let mut zone_seq = 0;
    while want.peek().is_some() {
        let batch = receive(&zone_rx, 1, TIMEOUT).remove(0);
        let (h, mut r) = read_header(batch).expect("a batch");
        assert_eq!(h.seq, zone_seq);
        zone_seq += 1;
        while let Some(entry) = r.next() {
            let Msg::GhostMove { move_time, .. } = entry.expect("an entry") else {
                panic!("not a GhostMove")
            };
            assert_eq!(Some(move_time), want.next(), "zone entries out of order");
        }
    }
    assert_eq!(seq + zone_seq, msgs);
    assert_quiet(&gw_rx);
    assert_quiet(&zone_rx);
}

#[test]
fn a_lone_entry_leaves_when_its_scheduled_flush_runs() {
    let Some(server) = nats_server() else { return };
    let gw = bus(&server, "lone", Source::Gateway(0));
    let rx = listen(&gw);
    let sender = bus(&server, "lone", Source::Zone(1));
    let (tx, scheduled) = mpsc::channel();
    let outbox = Outbox::new(sender.clone(), vec![Source::Gateway(0)], move |i| {
        tx.send(i).unwrap()
    });
    outbox.push_send(0, 42, b"hello");
    let i = scheduled
        .try_recv()
        .expect("the first push schedules a flush");
    assert_eq!(i, 0);
    outbox.push_send(0, 42, b" world");
    assert!(
        scheduled.try_recv().is_err(),
        "a push into an open batch schedules nothing"
    );
    sender.flush(TIMEOUT).unwrap();
    assert_quiet(&rx);
    outbox.flush(i);
    let batch = receive(&rx, 1, TIMEOUT).remove(0);
    let (_, mut r) = read_header(batch).unwrap();
    assert_eq!(
        r.next(),
        Some(Ok(Msg::Send {
            session: 42,
            bytes: Bytes::from_static(b"hello world")
        }))
    );
    assert_eq!(r.next(), None);
    outbox.flush(i);
    outbox.flush_all();
    assert_quiet(&rx);
}

#[test]
fn a_batch_reaching_60_kib_is_published_by_the_push() {
    let Some(server) = nats_server() else { return };
    let gw = bus(&server, "big", Source::Gateway(3));
    let rx = listen(&gw);
    let sender = bus(&server, "big", Source::Zone(1));
    let scheduled = Arc::new(AtomicUsize::new(0));
    let outbox = Outbox::new(sender.clone(), vec![Source::Gateway(3)], {
        let scheduled = scheduled.clone();
        move |_| {
            scheduled.fetch_add(1, Ordering::SeqCst);
        }
    });
    let chunk = vec![7u8; 16 * 1024];
    let per_batch = BATCH_LIMIT / chunk.len() + 1; // 4: the 4th push crosses the limit
    for session in 0..per_batch as u64 {
        outbox.push_send(3, session, &chunk);
    }
    assert_eq!(scheduled.load(Ordering::SeqCst), 1);
    assert_eq!(outbox.pending(), 0, "published by the push");
    let batch = receive(&rx, 1, TIMEOUT).remove(0);
    assert!(batch.len() >= BATCH_LIMIT);
    let (_, r) = read_header(batch).unwrap();
    let entries: Vec<_> = std::iter::from_fn({
        let mut r = r;
        move || r.next()
    })
    .collect();
    assert_eq!(entries.len(), per_batch);
    // A huge single entry leaves at once too, with nothing left to schedule.
    outbox.push_send(3, 99, &vec![1u8; BATCH_LIMIT]);
    assert_eq!(scheduled.load(Ordering::SeqCst), 1);
    receive(&rx, 1, TIMEOUT);
    // The next entry opens a new batch, which schedules again.
    outbox.push_send(3, 5, b"x");
    assert_eq!(scheduled.load(Ordering::SeqCst), 2);
    assert_eq!(outbox.pending(), 1);
}

#[test]
fn an_outbox_sends_to_a_destination_it_does_not_list_unbatched_and_counts_it() {
    let Some(server) = nats_server() else { return };
    let stranger = bus(&server, "stranger", Source::Zone(9));
    let rx = listen(&stranger);
    let sender = bus(&server, "stranger", Source::Zone(1));
    let outbox = Outbox::new(sender.clone(), vec![Source::Zone(2)], |_| {
        panic!("nothing to schedule")
    });
    outbox.push(Source::Zone(9), &Msg::GhostLeave { id: 4 });
    let (_, mut r) = read_header(receive(&rx, 1, TIMEOUT).remove(0)).unwrap();
    assert_eq!(r.next(), Some(Ok(Msg::GhostLeave { id: 4 })));
    assert_eq!(sender.counters().errors, 1);
}

/// Many sources pushed by one thread, drained by `workers` threads that take "drain S"
/// completions from one queue (the port): every item handled once, each source's in order,
/// never two drainers of one source at once.
fn inbox_stress(workers: usize, sources: u16, items: usize, pattern: &[u16]) {
    struct PerSource {
        drainers: AtomicUsize,
        next: AtomicU64,
    }
    let inbox: Inbox<(Source, u64)> = Inbox::new();
    let state: Vec<PerSource> = (0..sources)
        .map(|_| PerSource {
            drainers: AtomicUsize::new(0),
            next: AtomicU64::new(0),
        })
        .collect();
    let source_of = |k: u16| {
        if k % 2 == 0 {
            Source::Zone(k)
        } else {
            Source::Gateway(k)
        }
    };
    let index_of = |s: Source| match s {
        Source::Zone(k) | Source::Gateway(k) => usize::from(k),
    };
    let handled = AtomicUsize::new(0);
    let mut pushed = vec![0u64; usize::from(sources)];
    let (port, completions) = mpsc::channel::<Source>();
    let completions = Mutex::new(completions);
    thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let Ok(source) = completions.lock().unwrap().recv() else {
                    return; // the pusher is done and every completion is taken
                };
                inbox.drain(source, |(from, seq)| {
                    assert_eq!(from, source, "an item of another source");
                    let st = &state[index_of(from)];
                    let before = st.drainers.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(before, 0, "two drainers of {from:?} at once");
                    assert_eq!(seq, st.next.load(Ordering::SeqCst), "{from:?} out of order");
                    st.next.store(seq + 1, Ordering::SeqCst);
                    if seq % 8 == 0 {
                        thread::yield_now();
                    }
                    st.drainers.fetch_sub(1, Ordering::SeqCst);
                    handled.fetch_add(1, Ordering::SeqCst);
                });
            });
        }
        let pushed = &mut pushed;
        let inbox = &inbox;
        s.spawn(move || {
            for i in 0..items {
                let k = pattern[i % pattern.len()] % sources;
                let seq = pushed[usize::from(k)];
                pushed[usize::from(k)] += 1;
                let source = source_of(k);
                if inbox.push(source, (source, seq)) {
                    port.send(source).unwrap();
                }
                if i % 1024 == 0 {
                    thread::yield_now();
                }
            }
            // `port` dropped here: the workers stop once the queue is empty.
        });
    });
    assert_eq!(
        handled.load(Ordering::SeqCst),
        items,
        "items lost or doubled"
    );
    for (k, st) in state.iter().enumerate() {
        assert_eq!(st.next.load(Ordering::SeqCst), pushed[k], "source {k}");
    }
    assert_eq!(inbox.queued(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn an_inbox_hands_every_item_once_in_order_one_drainer_per_source(
        workers in 2usize..=4,
        sources in 1u16..=6,
        items in 1usize..5_000,
        pattern in proptest::collection::vec(any::<u16>(), 1..32),
    ) {
        inbox_stress(workers, sources, items, &pattern);
    }
}

#[test]
fn an_inbox_under_a_long_stress_loses_and_reorders_nothing() {
    let pattern: Vec<u16> = (0..97u16).map(|i| i.wrapping_mul(31) ^ (i >> 2)).collect();
    for workers in 2..=4 {
        inbox_stress(workers, 5, 100_000, &pattern);
    }
}

#[test]
fn junk_in_an_inbox_reaches_deliver_as_bytes_and_the_bus_goes_on() {
    let Some(server) = nats_server() else { return };
    let to = Source::Zone(0);
    let receiver = bus(&server, "junk", to);
    let rx = listen(&receiver);
    let sender = bus(&server, "junk", Source::Gateway(0));
    let good = numbered(&sender, to, 1, 2);
    let mut truncated = good.to_vec();
    truncated.pop();
    let sent = [
        Bytes::new(),
        Bytes::from_static(b"hello, not a batch"),
        good.slice(..10),
        Bytes::from(truncated),
        good.clone(),
    ];
    for b in &sent {
        sender.publish(to, b.clone());
    }
    let got = receive(&rx, sent.len(), TIMEOUT);
    assert_eq!(got, sent, "every payload as it was sent, in order");
    assert_eq!(
        read_header(got[0].clone()).unwrap_err(),
        WireError::NotABatch
    );
    assert_eq!(
        read_header(got[1].clone()).unwrap_err(),
        WireError::NotABatch
    );
    assert_eq!(
        read_header(got[2].clone()).unwrap_err(),
        WireError::NotABatch
    );
    let (_, mut r) = read_header(got[3].clone()).unwrap();
    assert_eq!(r.next(), Some(Err(WireError::Truncated)));
    assert_eq!(number_of(got[4].clone()), (1, 2));
    let c = receiver.counters();
    assert_eq!(c.msgs_in, sent.len() as u64);
    assert_eq!(c.bytes_in, sent.iter().map(|b| b.len() as u64).sum::<u64>());
}

#[test]
fn a_batch_over_the_servers_maximum_is_counted_and_the_bus_goes_on() {
    let Some(server) = nats_server() else { return };
    let to = Source::Zone(0);
    let receiver = bus(&server, "toobig", to);
    let rx = listen(&receiver);
    let sender = bus(&server, "toobig", Source::Zone(1));
    sender.publish(to, Bytes::from(vec![0u8; 2 << 20]));
    sender.publish(to, numbered(&sender, to, 3, 4));
    sender.flush(TIMEOUT).unwrap();
    assert_eq!(number_of(receive(&rx, 1, TIMEOUT).remove(0)), (3, 4));
    let c = sender.counters();
    assert_eq!((c.msgs_out, c.errors), (1, 1));
}

#[test]
fn dropping_the_last_bus_delivers_what_was_published() {
    let Some(server) = nats_server() else { return };
    let to = Source::Zone(0);
    let receiver = bus(&server, "drop", to);
    let rx = listen(&receiver);
    let sender = bus(&server, "drop", Source::Gateway(2));
    for i in 0..500 {
        sender.publish(to, numbered(&sender, to, 0, i));
    }
    let clone = sender.clone();
    drop(sender);
    clone.publish(to, numbered(&clone, to, 0, 500));
    drop(clone);
    let got = receive(&rx, 501, TIMEOUT);
    for (i, b) in got.into_iter().enumerate() {
        assert_eq!(number_of(b), (0, i as u32));
    }
}

#[test]
fn connect_without_a_server_fails_within_its_timeout_naming_the_url() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let timeout = Duration::from_millis(700);
    let start = Instant::now();
    let e = Bus::connect(config(&url, "nobody", Source::Zone(0)), timeout).unwrap_err();
    let took = start.elapsed();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(e.to_string().contains(&url), "{e}");
    assert!(
        took >= timeout / 2 && took < timeout + Duration::from_secs(2),
        "gave up after {took:?} for a timeout of {timeout:?}"
    );
}

#[test]
fn connect_refuses_a_cluster_name_that_is_not_a_subject_prefix() {
    let e = Bus::connect(
        config("nats://127.0.0.1:1", "two words", Source::Zone(0)),
        TIMEOUT,
    )
    .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
}

#[test]
fn connect_retries_until_a_late_server_is_up() {
    let Some(mut server) = nats_server() else {
        return;
    };
    server.kill();
    let url = server.url.clone();
    let bus = thread::scope(|s| {
        s.spawn(|| {
            thread::sleep(Duration::from_millis(400));
            server.restart();
        });
        Bus::connect(config(&url, "late", Source::Zone(0)), TIMEOUT).expect("connect")
    });
    let rx = listen(&bus);
    bus.publish(Source::Zone(0), numbered(&bus, Source::Zone(0), 1, 1));
    assert_eq!(number_of(receive(&rx, 1, TIMEOUT).remove(0)), (1, 1));
}

#[test]
fn the_bus_reconnects_and_resubscribes_after_the_server_restarts() {
    let Some(mut server) = nats_server() else {
        return;
    };
    let to = Source::Zone(0);
    let receiver = bus(&server, "restart", to);
    let rx = listen(&receiver);
    let sender = bus(&server, "restart", Source::Gateway(0));
    sender.publish(to, numbered(&sender, to, 0, 0));
    receive(&rx, 1, TIMEOUT);

    server.restart();
    // What was published while a connection was down may be lost (core NATS): publish until
    // one arrives, then check that later ones come in order.
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut n = 1;
    let first = loop {
        sender.publish(to, numbered(&sender, to, 0, n));
        n += 1;
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(100)) {
            break number_of(b).1;
        }
        assert!(
            Instant::now() < give_up,
            "nothing arrived after the restart"
        );
    };
    for i in 0..100 {
        sender.publish(to, numbered(&sender, to, 1, i));
    }
    let mut next = 0;
    let mut last = first;
    while next < 100 {
        let (id, i) = number_of(receive(&rx, 1, TIMEOUT).remove(0));
        if id == 0 {
            assert!(i > last, "the probes out of order");
            last = i;
            continue;
        }
        assert_eq!(i, next);
        next += 1;
    }
}

#[test]
fn clusters_sharing_a_server_do_not_hear_each_other() {
    let Some(server) = nats_server() else { return };
    let me = Source::Zone(0);
    let a = bus(&server, "alpha", me);
    let b = bus(&server, "beta.x", me);
    assert_eq!(a.subject(me), "alpha.zone.0");
    assert_eq!(a.subject(Source::Gateway(3)), "alpha.gw.3");
    assert_eq!(b.subject(me), "beta.x.zone.0");
    assert_eq!(a.name(), "alpha-zone-0");
    assert_eq!(b.name(), "beta.x-zone-0");
    let a_rx = listen(&a);
    let b_rx = listen(&b);
    a.publish(me, numbered(&a, me, 1, 0));
    b.publish(me, numbered(&b, me, 2, 0));
    assert_eq!(number_of(receive(&a_rx, 1, TIMEOUT).remove(0)), (1, 0));
    assert_eq!(number_of(receive(&b_rx, 1, TIMEOUT).remove(0)), (2, 0));
    assert_quiet(&a_rx);
    assert_quiet(&b_rx);
}

#[test]
fn headers_count_batches_per_destination_from_zero() {
    let Some(server) = nats_server() else { return };
    let b = bus(&server, "headers", Source::Gateway(4));
    for want in 0..3 {
        let h = b.header(Source::Zone(1));
        assert_eq!(
            (h.source, h.incarnation, h.seq),
            (Source::Gateway(4), 7, want)
        );
    }
    assert_eq!(b.header(Source::Zone(2)).seq, 0);
    assert_eq!(b.header(Source::Gateway(1)).seq, 0);
    assert_eq!(b.header(Source::Zone(1)).seq, 3);
}

#[test]
fn a_bus_subscribes_once() {
    let Some(server) = nats_server() else { return };
    let b = bus(&server, "once", Source::Zone(0));
    b.subscribe(|_| {}).unwrap();
    let e = b.subscribe(|_| {}).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
}

#[test]
fn a_panicking_deliver_is_counted_and_the_subscription_goes_on() {
    let Some(server) = nats_server() else { return };
    let me = Source::Zone(0);
    let b = bus(&server, "panicky", me);
    let (tx, rx) = mpsc::channel();
    b.subscribe(move |payload: Bytes| {
        assert_ne!(&payload[..], b"boom", "deliver fails on purpose");
        let _ = tx.send(payload);
    })
    .unwrap();
    b.publish(me, Bytes::from_static(b"boom"));
    b.publish(me, Bytes::from_static(b"after"));
    assert_eq!(receive(&rx, 1, TIMEOUT), [Bytes::from_static(b"after")]);
    let c = b.counters();
    assert_eq!((c.msgs_in, c.errors), (2, 1));
}

/// A subscriber to every subject (an operator's `nats sub '>'`) takes whatever the bus
/// publishes to check that its subscription is in place; the bus must start all the same.
#[test]
fn a_subscriber_to_everything_does_not_stop_a_bus_from_starting() {
    use std::io::{Read, Write};
    let Some(server) = nats_server() else { return };
    let mut tap = std::net::TcpStream::connect(server.addr()).unwrap();
    tap.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut info = [0u8; 4096];
    let _ = tap.read(&mut info).unwrap();
    tap.write_all(b"CONNECT {\"verbose\":false}\r\nSUB > 1\r\nPING\r\n")
        .unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("PONG") {
        let n = tap.read(&mut info).unwrap();
        assert!(n > 0, "the tap's connection closed");
        seen.extend_from_slice(&info[..n]);
    }
    let b = bus(&server, "tapped", Source::Zone(0));
    let rx = listen(&b);
    let to = bus(&server, "tapped", Source::Zone(1));
    to.publish(Source::Zone(0), numbered(&to, Source::Zone(0), 7, 1));
    assert_eq!(
        number_of(receive(&rx, 1, Duration::from_secs(5)).remove(0)),
        (7, 1)
    );
    drop(tap);
}

/// With a tick, a destination gets at most one NATS message per tick however fast entries
/// come, every entry still arrives once and in order, and the first entry after a quiet
/// tick is scheduled with no delay.
#[test]
fn a_tick_caps_the_messages_to_a_destination() {
    let Some(server) = nats_server() else { return };
    let receiver = bus(&server, "tick", Source::Zone(0));
    let rx = listen(&receiver);
    let sender = bus(&server, "tick", Source::Zone(1));
    let tick = Duration::from_millis(10);
    let cell: Arc<std::sync::OnceLock<Outbox>> = Arc::new(std::sync::OnceLock::new());
    let delays = Arc::new(Mutex::new(Vec::new()));
    let (c, d) = (cell.clone(), delays.clone());
    let outbox = Outbox::with_tick(
        sender.clone(),
        vec![Source::Zone(0)],
        tick,
        move |i, delay| {
            d.lock().unwrap().push(delay);
            let c = c.clone();
            // The glue's port timer, as a thread.
            thread::spawn(move || {
                thread::sleep(delay);
                c.get().expect("set").flush(i);
            });
        },
    );
    assert!(cell.set(outbox).is_ok());
    let outbox = cell.get().unwrap();
    let started = Instant::now();
    let n = 2_000u32;
    for id in 0..n {
        outbox.push(Source::Zone(0), &Msg::GhostLeave { id });
        thread::sleep(Duration::from_micros(100));
    }
    let spent = started.elapsed();
    let mut got = Vec::new();
    let mut messages = 0;
    let until = Instant::now() + TIMEOUT;
    while got.len() < n as usize && Instant::now() < until {
        let Ok(batch) = rx.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        messages += 1;
        let (_, mut r) = read_header(batch).unwrap();
        while let Some(m) = r.next() {
            let Msg::GhostLeave { id } = m.unwrap() else {
                panic!("not what was sent")
            };
            got.push(id);
        }
    }
    assert_eq!(
        got,
        (0..n).collect::<Vec<_>>(),
        "every entry once, in order"
    );
    let most = spent.as_millis() / tick.as_millis() + 2;
    assert!(
        messages as u128 <= most,
        "{messages} messages in {spent:?}: more than one per {tick:?}"
    );
    assert_eq!(
        delays.lock().unwrap()[0],
        Duration::ZERO,
        "the first flush waits for nothing"
    );
}
