//! The end of a `cport stress` run on paper: the printed report, the JSON (`--json`), the
//! chart of clients and delay over time (`--svg`) and the map (`--map-svg`).

use std::io::{self, Write};
use std::path::Path;

use cport_mmo_client::{MapSnapshot, Report, Second};
use plotters::prelude::*;

/// Prints the final report.
pub fn print_report(r: &Report, map: &MapSnapshot) {
    let st = &r.settings;
    println!(
        "max clients under {} ms: {}",
        st.delay_limit_ms, r.max_clients_under_limit
    );
    println!(
        "peak clients: {}   ramp maximum recorded (above {} ms): {}   final: {} clients, tracked delay {} ms",
        r.peak_clients,
        st.delay_limit_ms + st.delay_limit_ms / 2,
        r.ramp_max_recorded
            .map_or("none (never above)".to_string(), |m| m.to_string()),
        r.final_clients,
        r.final_tracked_delay_ms
    );
    println!(
        "delay samples: {}   p50 {} ms   p99 {} ms   max {} ms   (whole run)",
        r.delay_samples, r.p50_ms, r.p99_ms, r.max_ms
    );
    println!(
        "clients started: {}   shed: {}   packets in: {}   out: {}",
        r.clients_started, r.clients_shed, r.packets_in, r.packets_out
    );
    println!("errors: {}", r.errors);
    if let Some(id) = r.max_player_id {
        println!("highest player id given: {id}");
    }
    if r.procs > 1 {
        for c in &r.children {
            println!(
                "client process {}: cap {}, started {}, shed {}, final {}, samples {}, errors {}, CPU {:.1} s",
                c.index,
                c.cap,
                c.clients_started,
                c.clients_shed,
                c.final_clients,
                c.delay_samples,
                c.errors.total(),
                c.client_cpu_s
            );
        }
    }
    if let Some(n) = r.fd_limited_to {
        println!("note: the open-files limit capped the clients at {n}");
    }
    if let Some(why) = &r.stopped_early {
        println!("note: stopped early ({why}) after {:.1} s", r.elapsed_s);
    }
    println!(
        "client CPU: {:.1} s ({:.0}% of one core; {} process{}, {} threads each, backend {})",
        r.client_cpu_s,
        r.client_cpu_pct,
        r.procs,
        if r.procs == 1 { "" } else { "es" },
        st.client_threads,
        st.client_backend
    );
    if let Some(s) = r.server_cpu_s {
        println!(
            "server CPU: {:.1} s ({:.0}% of one core)",
            s,
            100.0 * s / r.elapsed_s.max(1e-3)
        );
    }
    println!(
        "map at the end: {} players, {} awake NPCs seen",
        map.players.len(),
        map.npcs.len()
    );
}

pub fn write_json(path: &Path, r: &Report) -> io::Result<()> {
    let mut f = io::BufWriter::new(std::fs::File::create(path)?);
    serde_json::to_writer_pretty(&mut f, r).map_err(io::Error::other)?;
    writeln!(f)?;
    f.flush()
}

fn plot_err<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(format!("drawing the SVG: {e}"))
}

/// Clients (top) and delay (bottom: tracked, p50, p99, the limit) over time.
pub fn chart_svg(path: &Path, r: &Report) -> io::Result<()> {
    let root = SVGBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(360);
    let t_max = r
        .series
        .last()
        .map_or(1.0, |s| s.t)
        .max(r.settings.duration_s)
        .max(1.0);
    let c_max = r.series.iter().map(|s| s.live).max().unwrap_or(0).max(10) as f64 * 1.1;
    let title = format!(
        "stress: {} clients under {} ms (peak {})",
        r.max_clients_under_limit, r.settings.delay_limit_ms, r.peak_clients
    );
    let mut chart = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..c_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("clients")
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(
            r.series.iter().map(|s| (s.t, s.clients as f64)),
            BLUE.stroke_width(2),
        ))
        .map_err(plot_err)?
        .label("clients logged in")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            [
                (0.0, r.max_clients_under_limit as f64),
                (t_max, r.max_clients_under_limit as f64),
            ],
            GREEN.stroke_width(1),
        ))
        .map_err(plot_err)?
        .label("max under the limit")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;

    let limit = r.settings.delay_limit_ms as f64;
    let d_max = r
        .series
        .iter()
        .map(|s| s.tracked_max_ms.max(s.p99_ms) as f64)
        .fold(limit * 1.6, f64::max)
        .min(limit * 20.0);
    let mut chart = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..d_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("delay (ms)")
        .draw()
        .map_err(plot_err)?;
    type Line = (&'static str, RGBColor, fn(&Second) -> u64);
    let lines: [Line; 4] = [
        ("tracked delay (course)", RED, |s| s.tracked_delay_ms),
        (
            "tracked, highest in the second",
            RGBColor(255, 160, 160),
            |s| s.tracked_max_ms,
        ),
        ("p99", MAGENTA, |s| s.p99_ms),
        ("p50", CYAN, |s| s.p50_ms),
    ];
    for (label, color, f) in lines {
        chart
            .draw_series(LineSeries::new(
                r.series.iter().map(|s| (s.t, (f(s) as f64).min(d_max))),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, limit), (t_max, limit)],
            BLACK.stroke_width(1),
        ))
        .map_err(plot_err)?
        .label("limit")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

/// The board as a point cloud: awake NPCs (green) and players (red), row 0 at the top; on
/// the 2000×2000 board one pixel covers 2×2 cells.
pub fn map_svg(path: &Path, map: &MapSnapshot) -> io::Result<()> {
    const PX: u32 = 1000;
    let size = map.world_size.max(1) as i32;
    let root = SVGBackend::new(path, (PX, PX + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} players (red), {} awake NPCs they see (green)",
                map.players.len(),
                map.npcs.len()
            ),
            ("sans-serif", 18),
        )
        .build_cartesian_2d(0..size, 0..size)
        .map_err(plot_err)?;
    // One point per output pixel: a dense region stays a readable file.
    let scale = (size as u32).div_ceil(PX).max(1) as i32;
    let dedup = |pts: &[(i16, i16)]| {
        let mut seen = std::collections::HashSet::new();
        pts.iter()
            .filter(|&&(x, y)| seen.insert((x as i32 / scale, y as i32 / scale)))
            // Row 0 at the top, as on the board (up is y − 1).
            .map(|&(x, y)| (x as i32, size - 1 - y as i32))
            .collect::<Vec<_>>()
    };
    let npcs = dedup(&map.npcs);
    let players = dedup(&map.players);
    let green = RGBColor(0, 150, 0);
    // Players first, NPCs on top: the NPCs a player wakes stand within a few pixels of it,
    // and drawn underneath they would disappear.
    chart
        .draw_series(
            players
                .iter()
                .map(|&p| Circle::new(p, 2, RED.mix(0.6).filled())),
        )
        .map_err(plot_err)?;
    chart
        .draw_series(npcs.iter().map(|&p| Pixel::new(p, green)))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}
