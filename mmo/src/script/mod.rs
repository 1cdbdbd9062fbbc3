//! NPC scripts in Lua 5.4 (the course's `npc.lua` way), for every NPC of the game at once.
//!
//! Memory: not a Lua state per NPC (about 27 KB each, over 5 GB for 200,000 NPCs) but a few
//! shard states, each behind its own lock; NPC `i` lives in shard `i % S`. A shard compiles
//! the script once, as `return function(_ENV, ...) <source> end` on the source's first line
//! (so line numbers in errors stay right), and calls that factory once per NPC with the NPC's
//! own environment table: every NPC has its own globals (`myid = x` in `set_uid` stays its
//! own) while the functions' prototypes are shared. An environment is made at the NPC's
//! first event, just before it (`set_uid(id)` is called then, so it has run before any
//! event, as the course has it), so NPCs nobody meets cost nothing.
//!
//! Events run on the worker that took their posted completion, with no game lock held: the
//! game's API functions (registered by the game, see `game::script_api`) take the locks they
//! need. A call that runs past its [`Limits`] is stopped and its NPC disabled; a call that
//! fails is logged (at most one line a second) and dropped. The sandbox is in `sandbox.rs`.

mod sandbox;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Function, Lua, Table};
use parking_lot::Mutex;

pub use sandbox::Limits;

/// The course's `npc.lua`, shipped with the game (`--npc-script course`).
pub const COURSE_SCRIPT: &str = include_str!("../../scripts/npc.lua");

/// Most distinct timer names a game's scripts may use (each is kept for the server's life).
const MAX_TIMER_NAMES: usize = 4096;

/// Lua memory a shard may hold (its NPCs' globals and the script's own data).
const SHARD_MEMORY: usize = 256 << 20;

/// Which script the NPCs run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptSource {
    /// The course's `npc.lua` ([`COURSE_SCRIPT`]), built into the game.
    Course,
    /// A script file, read at start.
    File(PathBuf),
    /// Script text given directly (its name for error messages, the text).
    Text(String, String),
}

impl ScriptSource {
    /// `course` is the built-in script; anything else is a file's path.
    pub fn parse(s: &str) -> ScriptSource {
        match s {
            "course" => ScriptSource::Course,
            path => ScriptSource::File(PathBuf::from(path)),
        }
    }

    /// Its name in error messages and logs.
    pub fn name(&self) -> String {
        match self {
            ScriptSource::Course => "npc.lua (course)".into(),
            ScriptSource::File(p) => p.display().to_string(),
            ScriptSource::Text(name, _) => name.clone(),
        }
    }

    fn text(&self) -> io::Result<String> {
        match self {
            ScriptSource::Course => Ok(COURSE_SCRIPT.into()),
            ScriptSource::File(p) => std::fs::read_to_string(p)
                .map_err(|e| io::Error::new(e.kind(), format!("npc script {}: {e}", p.display()))),
            ScriptSource::Text(_, t) => Ok(t.clone()),
        }
    }
}

/// An event for one NPC's script.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event<'a> {
    /// `event_player_move(player)`.
    PlayerMove(u32),
    /// `event_timer(name)`.
    Timer(&'a str),
}

/// What became of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It ran (or failed, or was stopped: counted and logged).
    Ran,
    /// Its shard was busy and `wait` was false: post it again.
    Busy,
    /// Its NPC is disabled: dropped.
    Off,
}

/// One shard: a Lua state with the script compiled and the environments of its NPCs.
struct Shard {
    lua: Lua,
    env_meta: Table,
    factory: Function,
    /// Environment of local NPC `k` at index `k + 1` (nil until its first event).
    envs: Table,
}

/// Lines logged about failing scripts: at most one a second, with how many were left out.
#[derive(Default)]
struct ErrLog {
    last: Option<Instant>,
    suppressed: u64,
}

/// Timer names given to `API_set_timer`, by number (a posted timer carries the number).
#[derive(Default)]
struct TimerNames {
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32>,
}

/// Hands a new shard state what the game attached.
type Attach = Box<dyn Fn(&Lua) + Send + Sync>;

/// What shards are built from (kept for a reload).
struct Setup {
    src: ScriptSource,
    shards: usize,
    npcs: usize,
    limits: Limits,
    api: fn(&Lua, &Table) -> mlua::Result<()>,
}

impl Setup {
    /// The script read and compiled into new shard states.
    fn build(&self) -> io::Result<Vec<Shard>> {
        let name = self.src.name();
        let text = self.src.text()?;
        let bad = |e: mlua::Error| {
            let msg = match &e {
                mlua::Error::SyntaxError { message, .. } => message.clone(),
                e => first_line(e),
            };
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("npc script {name}: {msg}"),
            )
        };
        let per_shard = self.npcs.div_ceil(self.shards);
        let mut built = Vec::with_capacity(self.shards);
        for s in 0..self.shards {
            let (lua, env_meta) =
                sandbox::new_state(self.limits, SHARD_MEMORY, self.api).map_err(bad)?;
            // The factory on the same first line as the source: error lines stay the file's.
            // The closing `end` on the source's last line if it ends with a newline: an
            // unclosed block is then reported at the file's last line + 1, as `luac` does.
            let sep = if text.ends_with('\n') { "" } else { "\n" };
            let factory: Function = lua
                .load(format!("return function(_ENV, ...) {text}{sep}end"))
                .set_name(format!("@{name}"))
                .call(())
                .map_err(bad)?;
            if s == 0 {
                // The top-level code once, so that a script that fails there stops the start.
                let scratch = lua.create_table().map_err(bad)?;
                scratch.set_metatable(Some(env_meta.clone())).map_err(bad)?;
                budget(&lua).reset();
                factory.call::<()>(scratch).map_err(bad)?;
            }
            let envs = lua.create_table_with_capacity(per_shard, 0).map_err(bad)?;
            built.push(Shard {
                lua,
                env_meta,
                factory,
                envs,
            });
        }
        Ok(built)
    }
}

/// The script engine of a game: its shards, which NPCs are disabled, its counters.
pub(crate) struct Scripts {
    name: String,
    shards: Box<[Mutex<Shard>]>,
    first_npc: u32,
    disabled: Box<[AtomicBool]>,
    /// Events run.
    pub calls: AtomicU64,
    /// Events (or `set_uid`s) that failed.
    pub errors: AtomicU64,
    /// Events stopped by the budget (their NPCs disabled).
    pub kills: AtomicU64,
    /// Events posted again because their shard was busy.
    pub deferred: AtomicU64,
    /// Which workers may run script events at once ([`Gate`]).
    pub gate: Gate,
    timers: Mutex<TimerNames>,
    log: Mutex<ErrLog>,
    setup: Setup,
    /// What [`Scripts::attach`] gave, for the shards of a reload.
    attached: Mutex<Option<Attach>>,
}

impl Scripts {
    /// Compiles `src` into `shards` states for NPCs `first_npc..first_npc + npcs`, with the
    /// API functions `api` registers. A syntax error (or an error in the script's top-level
    /// code, run once here in a scratch environment) is an `InvalidInput` error naming the
    /// file and line.
    pub fn load(
        src: &ScriptSource,
        shards: usize,
        first_npc: u32,
        npcs: usize,
        limits: Limits,
        api: fn(&Lua, &Table) -> mlua::Result<()>,
    ) -> io::Result<Scripts> {
        let setup = Setup {
            src: src.clone(),
            shards: shards.clamp(1, npcs.max(1)),
            npcs,
            limits,
            api,
        };
        let built = setup.build()?;
        Ok(Scripts {
            name: src.name(),
            shards: built.into_iter().map(Mutex::new).collect(),
            first_npc,
            disabled: (0..npcs).map(|_| AtomicBool::new(false)).collect(),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            kills: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
            gate: Gate::default(),
            timers: Mutex::new(TimerNames::default()),
            log: Mutex::new(ErrLog::default()),
            setup,
            attached: Mutex::new(None),
        })
    }

    /// Gives every shard `data` as app data (the game hands its API functions what they need
    /// to reach it, once it is built); a reload gives it to the new shards too.
    pub fn attach<T: Clone + Send + Sync + 'static>(&self, data: T) {
        let give: Attach = Box::new(move |lua: &Lua| {
            lua.set_app_data(data.clone());
        });
        for s in self.shards.iter() {
            give(&s.lock().lua);
        }
        *self.attached.lock() = Some(give);
    }

    /// Reads and compiles the script again; if it loads, every shard is replaced by a new
    /// one: every NPC's environment is made anew at its next event (its top-level code and
    /// `set_uid` run again) and disabled NPCs run again. If it does not load, nothing
    /// changes and the error says why (as at start).
    pub fn reload(&self) -> io::Result<()> {
        let built = self.setup.build()?;
        let attached = self.attached.lock();
        for (slot, new) in self.shards.iter().zip(built) {
            if let Some(give) = attached.as_ref() {
                give(&new.lua);
            }
            *slot.lock() = new;
        }
        drop(attached);
        for d in self.disabled.iter() {
            d.store(false, Relaxed);
        }
        tracing::info!("npc script {}: reloaded", self.name);
        Ok(())
    }

    /// Whether NPC `npc` still runs its script (false once the budget stopped it).
    pub fn enabled(&self, npc: u32) -> bool {
        npc.checked_sub(self.first_npc)
            .and_then(|i| self.disabled.get(i as usize))
            .is_some_and(|d| !d.load(Relaxed))
    }

    /// The number of timer name `name` (`None` once [`MAX_TIMER_NAMES`] are in use).
    pub fn timer_id(&self, name: &str) -> Option<u32> {
        let mut t = self.timers.lock();
        if let Some(&id) = t.ids.get(name) {
            return Some(id);
        }
        if t.names.len() >= MAX_TIMER_NAMES {
            return None;
        }
        let id = t.names.len() as u32;
        let name: Arc<str> = name.into();
        t.names.push(name.clone());
        t.ids.insert(name, id);
        Some(id)
    }

    /// The timer name numbered `id`.
    pub fn timer_name(&self, id: u32) -> Option<Arc<str>> {
        self.timers.lock().names.get(id as usize).cloned()
    }

    /// Runs `ev` for NPC `npc` with `ctx` as its shard's app data while it runs (the API
    /// functions read it). With `wait` false, a busy shard is not waited for ([`Outcome::Busy`]).
    pub fn run<C: Send + 'static>(&self, npc: u32, ctx: C, ev: Event<'_>, wait: bool) -> Outcome {
        let Some(i) = npc.checked_sub(self.first_npc).map(|i| i as usize) else {
            return Outcome::Off;
        };
        if !self.enabled(npc) {
            return Outcome::Off;
        }
        let shard = &self.shards[i % self.shards.len()];
        let sh = if wait {
            shard.lock()
        } else {
            match shard.try_lock() {
                Some(sh) => sh,
                None => return Outcome::Busy,
            }
        };
        sh.lua.set_app_data(ctx);
        let r = self.call(&sh, npc, i / self.shards.len() + 1, ev);
        let over = budget(&sh.lua).exceeded();
        sh.lua.remove_app_data::<C>();
        drop(sh);
        match r {
            Ok(true) => {
                self.calls.fetch_add(1, Relaxed);
            }
            Ok(false) => {}
            Err(e) if over => {
                self.calls.fetch_add(1, Relaxed);
                self.kills.fetch_add(1, Relaxed);
                self.disabled[i].store(true, Relaxed);
                self.note(|| {
                    format!(
                        "npc script {}: NPC {npc} ran past its budget ({}), disabled",
                        self.name,
                        first_line(&e)
                    )
                });
            }
            Err(e) => {
                self.calls.fetch_add(1, Relaxed);
                self.errors.fetch_add(1, Relaxed);
                self.note(|| {
                    format!(
                        "npc script {}: NPC {npc}: {}; event dropped",
                        self.name,
                        first_line(&e)
                    )
                });
            }
        }
        Outcome::Ran
    }

    /// `ev` in NPC `npc`'s environment (index `k` of its shard), made first if need be.
    /// `Ok(false)`: the script has no handler for it.
    fn call(&self, sh: &Shard, npc: u32, k: usize, ev: Event<'_>) -> mlua::Result<bool> {
        let env = self.env(sh, npc, k)?;
        budget(&sh.lua).reset();
        match ev {
            Event::PlayerMove(player) => {
                let Some(f) = env.raw_get::<Option<Function>>("event_player_move")? else {
                    return Ok(false);
                };
                f.call::<()>(player)?;
            }
            Event::Timer(name) => {
                let Some(f) = env.raw_get::<Option<Function>>("event_timer")? else {
                    return Ok(false);
                };
                f.call::<()>(name)?;
            }
        }
        Ok(true)
    }

    /// NPC `npc`'s environment (index `k` of its shard): made, its top-level code run and
    /// its `set_uid(npc)` called, the first time.
    fn env(&self, sh: &Shard, npc: u32, k: usize) -> mlua::Result<Table> {
        if let Some(env) = sh.envs.raw_get::<Option<Table>>(k)? {
            return Ok(env);
        }
        budget(&sh.lua).reset();
        let env = sh.lua.create_table()?;
        env.set_metatable(Some(sh.env_meta.clone()))?;
        // Kept even if `set_uid` fails below: that is logged once, not at every event.
        sh.envs.raw_set(k, &env)?;
        sh.factory.call::<()>(&env)?;
        if let Some(f) = env.raw_get::<Option<Function>>("set_uid")? {
            f.call::<()>(npc)?;
        }
        Ok(env)
    }

    /// Logs `line()` unless a line was logged less than a second ago (then counts it).
    fn note(&self, line: impl FnOnce() -> String) {
        let mut l = self.log.lock();
        let now = Instant::now();
        if l.last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            l.suppressed += 1;
            return;
        }
        let more = std::mem::take(&mut l.suppressed);
        l.last = Some(now);
        drop(l);
        if more > 0 {
            tracing::warn!("{} ({more} more script errors not shown)", line());
        } else {
            tracing::warn!("{}", line());
        }
    }

    /// Lua memory of all shards now, in bytes.
    pub fn memory(&self) -> usize {
        self.shards.iter().map(|s| s.lock().lua.used_memory()).sum()
    }

    /// Makes the environment of every NPC that has none yet (and calls its `set_uid`), with
    /// `ctx` as the app data: what lazy creation would do at each NPC's first event.
    pub fn prepare_all<C: Clone + Send + 'static>(&self, ctx: C) -> mlua::Result<()> {
        let s = self.shards.len();
        for (si, shard) in self.shards.iter().enumerate() {
            let sh = shard.lock();
            sh.lua.set_app_data(ctx.clone());
            let mut k = 1;
            let mut i = si;
            let mut r = Ok(());
            while i < self.disabled.len() && r.is_ok() {
                let npc = self.first_npc + i as u32;
                r = self.env(&sh, npc, k).map(|_| ());
                k += 1;
                i += s;
            }
            sh.lua.remove_app_data::<C>();
            r?;
        }
        Ok(())
    }

    /// Test hook: global `name` of NPC `npc`'s environment, if it has one and it is an integer.
    #[cfg(test)]
    pub fn global_int(&self, npc: u32, name: &str) -> Option<i64> {
        let i = (npc - self.first_npc) as usize;
        let sh = self.shards[i % self.shards.len()].lock();
        let env: Table = sh.envs.raw_get(i / self.shards.len() + 1).ok()?;
        env.raw_get::<Option<i64>>(name).ok()?
    }
}

/// The budget of a shard's state (always there: set when the state is made).
fn budget(lua: &Lua) -> mlua::AppDataRef<'_, sandbox::Budget> {
    lua.app_data_ref::<sandbox::Budget>()
        .expect("every shard state has a budget")
}

/// The first line of an error's message (without the traceback mlua adds).
fn first_line(e: &mlua::Error) -> String {
    let e = match e {
        mlua::Error::CallbackError { cause, .. } => cause.as_ref(),
        e => e,
    };
    e.to_string().lines().next().unwrap_or("").to_string()
}

/// Most script events waiting for a worker's turn; past it an event is dropped (counted in
/// [`Gate::dropped`]): a script slower than its events come must not grow memory without
/// end.
const MAX_WAITING: usize = 65_536;

/// How many workers may run script events at once: fewer than the pool has (the engine sets
/// it to workers − 1, at least 1), so that however slow a script is, a worker is always left
/// for the network and the game's own timers. Events that find the gate full wait in its
/// queue, in order, and the worker inside runs them before it leaves (a batch at a time).
#[derive(Default)]
pub(crate) struct Gate {
    max: AtomicUsize,
    running: AtomicUsize,
    queue: parking_lot::Mutex<std::collections::VecDeque<(u64, u32, u64)>>,
    /// Events dropped because [`MAX_WAITING`] waited already.
    pub dropped: AtomicU64,
}

impl Gate {
    /// At most `n` workers (at least 1) run script events at once.
    pub fn limit(&self, n: usize) {
        self.max.store(n.max(1), Ordering::Relaxed);
    }

    /// Takes a turn: false if as many workers as allowed run scripts now.
    pub fn enter(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed).max(1);
        let mut r = self.running.load(Ordering::Acquire);
        loop {
            if r >= max {
                return false;
            }
            match self
                .running
                .compare_exchange_weak(r, r + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => r = now,
            }
        }
    }

    /// Gives the turn back.
    pub fn leave(&self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
    }

    /// Queues an event (tag, NPC, value) that found the gate full; false if it was dropped.
    pub fn wait(&self, event: (u64, u32, u64)) -> bool {
        let mut q = self.queue.lock();
        if q.len() >= MAX_WAITING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        q.push_back(event);
        true
    }

    /// The oldest waiting event.
    pub fn next(&self) -> Option<(u64, u32, u64)> {
        self.queue.lock().pop_front()
    }

    /// Events waiting now.
    pub fn waiting(&self) -> usize {
        self.queue.lock().len()
    }
}
