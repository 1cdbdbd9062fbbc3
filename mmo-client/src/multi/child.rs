//! A child's side of a multi-process run: its dummies on its own port, doing what the
//! parent's lines say.

use std::io::{self, BufRead, Write};
use std::sync::mpsc;
use std::time::Instant;

use super::wire::{send_up, ChildSettings, Counts, Up, TICK};
use crate::dummies::{AddError, Clients};

/// A child's side: opens the sockets of `cs`, does what the lines of `input` say, reports
/// on `out` (see the module's docs) and returns after `q` or the end of `input`. An error
/// writing `out` (the parent is gone) ends it too.
pub fn run_child(
    cs: &ChildSettings,
    input: impl BufRead + Send + 'static,
    mut out: impl Write,
) -> io::Result<()> {
    let settings = cs.settings()?;
    let mut clients = Clients::start(&settings, format!("dummy{}.", cs.index), true)?;
    send_up(
        &mut out,
        &Up::Hello {
            cap: clients.cap(),
            fd_limited_to: clients.fd_limited_to(),
            backend: clients.backend().to_string(),
        },
    )?;
    let (tx, rx) = mpsc::channel::<u8>();
    std::thread::Builder::new()
        .name(format!("stress-child-{}-in", cs.index))
        .spawn(move || {
            for line in input.lines() {
                let Ok(line) = line else { break };
                let Some(&c) = line.as_bytes().first() else {
                    continue;
                };
                if tx.send(c).is_err() || c == b'q' {
                    return;
                }
            }
            let _ = tx.send(b'q');
        })?;
    let mut c = Counts {
        max_id: -1,
        ..Counts::default()
    };
    let seed = (cs.index as u64) << 48;
    let counts = |c: &mut Counts, clients: &Clients| {
        c.active = clients.active();
        c.live = clients.live();
        c.samples = clients.samples();
        (c.packets_in, c.packets_out) = clients.packets();
        c.errors = clients.errors();
        c.max_id = clients.max_id();
    };
    let mut next_tick = Instant::now() + TICK;
    let mut fd_warned = false;
    let result = loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(b'a') => {
                c.adds += 1;
                match clients.add(seed | c.adds) {
                    Ok(()) => c.started += 1,
                    Err(AddError::Full) => c.full = true,
                    Err(AddError::FdLimit(e)) => {
                        c.full = true;
                        if !fd_warned {
                            fd_warned = true;
                            tracing::warn!(
                                "stress child {}: the open-files limit stops it at {} clients ({e})",
                                cs.index,
                                clients.live()
                            );
                        }
                    }
                    Err(AddError::Other(_)) => {}
                }
            }
            Ok(b's') => {
                c.sheds += 1;
                if clients.shed() {
                    c.shed += 1;
                }
            }
            Ok(b'm') => {
                let (players, npcs) = clients.map_ids();
                if let Err(e) = send_up(&mut out, &Up::Map { players, npcs }) {
                    break Err(e);
                }
            }
            Ok(b'q') | Err(mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= next_tick {
            next_tick += TICK;
            counts(&mut c, &clients);
            let d = clients.take_forwarded();
            if let Err(e) = send_up(&mut out, &Up::Tick { d, c: c.clone() }) {
                break Err(e);
            }
        }
    };
    let (players, npcs) = clients.map_ids();
    let active = clients.active();
    let cpu = clients.stop();
    // The samples that came in since the last tick, then the end: the parent has every one.
    counts(&mut c, &clients);
    c.active = active;
    result?;
    send_up(
        &mut out,
        &Up::Tick {
            d: clients.take_forwarded(),
            c: c.clone(),
        },
    )?;
    send_up(
        &mut out,
        &Up::End {
            c,
            cpu_s: cpu.as_secs_f64(),
            players,
            npcs,
        },
    )
}
