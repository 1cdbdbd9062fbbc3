//! What the rest of the crate says about the database: where it is ([`DbConfig`], the
//! `--db` argument) and what a player's row holds ([`PlayerRow`]).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where players are kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DbConfig {
    /// Nowhere: players start fresh at every login (`--db none`).
    #[default]
    None,
    /// An SQLite database file (`sqlite:PATH`), created if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL server (`postgres://USER@HOST:PORT/DB`).
    Postgres(String),
}

impl FromStr for DbConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<DbConfig, String> {
        if s == "none" {
            Ok(DbConfig::None)
        } else if let Some(path) = s.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err("sqlite: needs a path (sqlite:PATH)".into());
            }
            Ok(DbConfig::Sqlite(PathBuf::from(path)))
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            s.parse::<postgres::Config>()
                .map_err(|e| format!("bad PostgreSQL URL {s:?}: {e}"))?;
            Ok(DbConfig::Postgres(s.to_string()))
        } else {
            Err(format!(
                "unknown database {s:?}: use sqlite:PATH, postgres://USER@HOST:PORT/DB or none"
            ))
        }
    }
}

impl fmt::Display for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbConfig::None => f.write_str("none"),
            DbConfig::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            // The URL may hold a password: show the scheme only.
            DbConfig::Postgres(_) => f.write_str("postgres"),
        }
    }
}

/// One player as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayerRow {
    /// The login name (valid UTF-8, no NUL, 1..=20 bytes).
    pub name: String,
    /// Column.
    pub x: u16,
    /// Row.
    pub y: u16,
    /// Hit points.
    pub hp: i32,
    /// Most hit points.
    pub max_hp: i32,
    /// Experience.
    pub exp: i32,
    /// Level.
    pub level: i32,
}
