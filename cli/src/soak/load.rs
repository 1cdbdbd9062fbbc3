//! The load's schedule: every kind of client, each on its own task of the one-thread runtime,
//! until the deadline or until a server is gone.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use cport_mmo_proto::splitmix64;
use hdrhistogram::Histogram;
use tokio::time::{sleep, sleep_until};

use super::counts::{ClientCounts, Rand, HOSTILE};
use super::echo_load::{churn_echo, echo_verified, never_reader};
use super::game_load::{churn_mmo, flooder, hostile, player};
use super::options::Args;
pub(crate) async fn load(
    args: &Args,
    (echo, mmo): (SocketAddr, SocketAddr),
    duration: Duration,
    t: Rc<ClientCounts>,
    stop: Arc<AtomicBool>,
) {
    let deadline = tokio::time::Instant::now() + duration;
    let live = {
        let stop = stop.clone();
        move || !stop.load(Relaxed) && tokio::time::Instant::now() < deadline
    };
    *t.answer_us.borrow_mut() = Histogram::new_with_bounds(1, 60_000_000, 3).ok();
    let mut tasks = Vec::new();
    let per_conn = args.echo_mib_s * 1024.0 * 1024.0 / args.echo_conns.max(1) as f64;
    for i in 0..args.echo_conns {
        let (t, live) = (t.clone(), live.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let mut r = Rand(splitmix64(0xEC40 + i as u64));
            while live() {
                let total = r.range(64 << 10, 8 << 20);
                echo_verified(echo, r.next(), total, per_conn, &t, &live).await;
            }
        }));
    }
    let churners = 4;
    let gap = Duration::from_secs_f64(churners as f64 / args.churn_per_s.max(0.01));
    for i in 0..churners {
        let (t, live) = (t.clone(), live.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let mut r = Rand(splitmix64(0xC4C4 + i as u64));
            let mut n = 0u64;
            while live() {
                let at = tokio::time::Instant::now() + gap;
                if r.below(2) == 0 {
                    churn_echo(echo, &mut r, &t).await;
                } else {
                    n += 1;
                    churn_mmo(mmo, &format!("c{i}-{n}"), &mut r, &t).await;
                }
                sleep_until(at.min(deadline)).await;
            }
        }));
    }
    for i in 0..args.never_readers {
        let (t, live) = (t.clone(), live.clone());
        tasks.push(tokio::task::spawn_local(async move {
            sleep(Duration::from_millis(500 * i as u64)).await;
            while live() {
                never_reader(echo, &t).await;
                sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    if args.hostile_per_s > 0.0 {
        let gap = Duration::from_secs_f64(1.0 / args.hostile_per_s);
        let (t, live) = (t.clone(), live.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let mut r = Rand(splitmix64(0xBAD));
            let mut k = 0;
            let mut flood: Option<tokio::task::JoinHandle<()>> = None;
            let mut open: Vec<tokio::task::JoinHandle<()>> = Vec::new();
            while live() {
                let at = tokio::time::Instant::now() + gap;
                let kind = k % HOSTILE.len();
                k += 1;
                if kind == 7 {
                    // One flooder at a time, on its own task.
                    if flood.as_ref().is_none_or(|f| f.is_finished()) {
                        let t = t.clone();
                        flood = Some(tokio::task::spawn_local(async move {
                            flooder(mmo, &t).await;
                        }));
                    }
                } else {
                    let t = t.clone();
                    let seed = r.next();
                    open.retain(|h| !h.is_finished());
                    open.push(tokio::task::spawn_local(async move {
                        hostile(mmo, kind, seed, &t).await;
                    }));
                }
                sleep_until(at.min(deadline)).await;
            }
            // Each ends within HOSTILE_CLOSE (SLOW_CLOSE for the flood).
            for h in open.into_iter().chain(flood) {
                let _ = h.await;
            }
        }));
    }
    let walk_range = args.walk_range;
    for i in 0..args.players {
        let (t, live) = (t.clone(), live.clone());
        tasks.push(tokio::task::spawn_local(async move {
            // Log in over the first second, not all at once.
            sleep(Duration::from_millis(i as u64 * 1000 / 200)).await;
            player(mmo, i, walk_range, &t, &live).await;
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}
