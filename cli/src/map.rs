//! `cport map`: maps of obstacles for `cport mmo --map FILE` (the format is
//! `cport_mmo::map`'s: `cport-map W H` then one row of `.`/`#` per line).

use std::io::{self, Write};
use std::path::PathBuf;

use cport_mmo::Map;

/// What `cport map` does.
#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Writes a generated map: straight wall segments and rooms with a door in each side,
    /// the same for the same size, seed and density.
    Gen(GenArgs),
    /// Reads a map and says its size and how much of it is blocked (an error, naming the
    /// line, for a malformed one).
    Check(CheckArgs),
}

/// Options of `cport map gen`.
#[derive(clap::Args, Debug)]
pub struct GenArgs {
    /// Width and height (the game's --world-size).
    #[arg(long, default_value_t = cport_mmo_proto::W_WIDTH)]
    pub size: u16,
    /// Seed of the walls and rooms.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of cells blocked, 0 to 0.4.
    #[arg(long, default_value_t = 0.1)]
    pub density: f64,
    /// Where to write it (`-`: standard output).
    #[arg(long)]
    pub out: PathBuf,
}

/// Options of `cport map check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The map file.
    pub file: PathBuf,
}

pub fn run(cmd: Cmd) -> io::Result<()> {
    match cmd {
        Cmd::Gen(a) => {
            if a.size == 0 || !(0.0..=0.4).contains(&a.density) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "--size must be at least 1 and --density between 0 and 0.4",
                ));
            }
            let map = Map::generate(a.size, a.seed, a.density);
            let text = map.to_text();
            if a.out.as_os_str() == "-" {
                io::stdout().write_all(text.as_bytes())?;
            } else {
                std::fs::write(&a.out, text)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", a.out.display())))?;
                println!("{}", summary(&a.out, &map));
            }
            Ok(())
        }
        Cmd::Check(a) => {
            let map = Map::load(&a.file)?;
            println!("{}", summary(&a.file, &map));
            Ok(())
        }
    }
}

fn summary(path: &std::path::Path, map: &Map) -> String {
    let cells = usize::from(map.width()) * usize::from(map.height());
    format!(
        "{}: {}x{}, {} of {cells} cells blocked ({:.1}%)",
        path.display(),
        map.width(),
        map.height(),
        map.blocked_count(),
        100.0 * map.blocked_count() as f64 / cells.max(1) as f64
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gen_writes_a_map_the_game_reads_back() {
        let out = std::env::temp_dir().join(format!("h-map-gen-{}.map", std::process::id()));
        run(Cmd::Gen(GenArgs {
            size: 64,
            seed: 4,
            density: 0.2,
            out: out.clone(),
        }))
        .unwrap();
        let map = Map::load(&out).unwrap();
        assert_eq!(map, Map::generate(64, 4, 0.2));
        assert!(map.blocked_count() > 64 * 64 / 6, "{map:?}");
        run(Cmd::Check(CheckArgs { file: out.clone() })).unwrap();
        std::fs::write(&out, "cport-map 2 2\n..\n.?\n").unwrap();
        let e = run(Cmd::Check(CheckArgs { file: out.clone() }))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{}:3:", out.display())), "{e}");
        std::fs::remove_file(&out).unwrap();
        assert!(run(Cmd::Gen(GenArgs {
            size: 8,
            seed: 1,
            density: 0.9,
            out,
        }))
        .is_err());
    }

    /// `cport mmo --map FILE`: the map reaches the game's config; a malformed file or one
    /// of another size than --world-size is an error naming the file.
    #[test]
    fn the_game_flags_take_a_map_of_the_boards_size_only() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            game: cport_mmo::args::GameArgs,
        }
        let file = std::env::temp_dir().join(format!("h-map-flags-{}.map", std::process::id()));
        let path = file.display().to_string();
        let config = |size: &str| {
            Flags::parse_from([
                "cport",
                "--db",
                "none",
                "--world-size",
                size,
                "--map",
                &path,
                "--aggressive-npcs",
                "25",
            ])
            .game
            .config()
        };
        std::fs::write(&file, Map::generate(32, 2, 0.1).to_text()).unwrap();
        let cfg = config("32").unwrap();
        assert_eq!(cfg.map.as_deref(), Some(&Map::generate(32, 2, 0.1)));
        assert_eq!(cfg.aggressive_npcs, 25);
        let e = config("33").unwrap_err().to_string();
        assert!(e.contains(&path) && e.contains("32x32"), "{e}");
        std::fs::write(&file, "cport-map-rects 32 32\n1 1\n2 2 40 2\n").unwrap();
        let e = config("32").unwrap_err().to_string();
        assert!(e.starts_with(&format!("{path}:3:")), "{e}");
        std::fs::remove_file(&file).unwrap();
        let e = config("32").unwrap_err().to_string();
        assert!(e.contains(&path), "{e}");
        assert!(Flags::try_parse_from(["cport", "--aggressive-npcs", "101"]).is_err());
    }
}
