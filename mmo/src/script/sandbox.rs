//! One shard's Lua state: the sandbox (which libraries a script sees), the table every NPC's
//! environment falls back to, and the instruction budget that stops a runaway call.
//!
//! A script never sees the state's real globals: each NPC's environment is its own table
//! whose metatable `__index`es the shared table built here (API functions and the safe parts
//! of the standard library, the libraries as read-only proxies). So one NPC's globals never
//! leak into another's, and no script can change what the others see.

use std::cell::Cell;
use std::time::{Duration, Instant};

use mlua::{Function, HookTriggers, Lua, LuaOptions, StdLib, Table, VmState};

/// How many VM instructions run between two looks at the budget.
const HOOK_EVERY: u32 = 1000;

/// The base library functions a script may use. Left out: `dofile`, `loadfile`, `load`
/// (its chunks would run in the state's real globals), `require`, `collectgarbage` (a full
/// collection of a shard holding thousands of NPCs is not bounded by the budget) and `warn`.
const BASE: &[&str] = &[
    "assert",
    "error",
    "getmetatable",
    "ipairs",
    "next",
    "pairs",
    "rawequal",
    "rawget",
    "rawlen",
    "rawset",
    "select",
    "setmetatable",
    "tonumber",
    "tostring",
    "type",
    "_VERSION",
];

/// The libraries a script may use (each through a read-only proxy).
const LIBS: &[&str] = &["string", "table", "math", "utf8"];

/// The error message of a call stopped by its budget.
pub(super) const BUDGET_EXCEEDED: &str = "instruction budget exceeded";

/// What one call may spend: instructions and wall-clock time, whichever runs out first.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// VM instructions per call (counted in steps of 1000).
    pub instructions: u64,
    /// Wall-clock time per call.
    pub wall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            instructions: 1_000_000,
            wall: Duration::from_millis(10),
        }
    }
}

/// The budget of the call running now on a shard (the state's app data, read by its hook).
pub(super) struct Budget {
    pub limits: Limits,
    used: Cell<u64>,
    deadline: Cell<Instant>,
    exceeded: Cell<bool>,
}

impl Budget {
    /// Starts a new call's budget.
    pub fn reset(&self) {
        self.used.set(0);
        self.deadline.set(Instant::now() + self.limits.wall);
        self.exceeded.set(false);
    }

    /// Whether the call ran out of its budget.
    pub fn exceeded(&self) -> bool {
        self.exceeded.get()
    }
}

/// A new shard state: the sandbox, the budget hook, a memory limit, and the API functions
/// `api` registers. Returns the state and the metatable every NPC environment gets (its
/// `__index` is the shared table, and it cannot be read or replaced from Lua).
pub(super) fn new_state(
    limits: Limits,
    memory_limit: usize,
    api: fn(&Lua, &Table) -> mlua::Result<()>,
) -> mlua::Result<(Lua, Table)> {
    let lua = Lua::new_with(
        StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8,
        LuaOptions::new(),
    )?;
    lua.set_app_data(Budget {
        limits,
        used: Cell::new(0),
        deadline: Cell::new(Instant::now() + limits.wall),
        exceeded: Cell::new(false),
    });
    lua.set_global_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        |lua, _| {
            let Some(b) = lua.app_data_ref::<Budget>() else {
                return Ok(VmState::Continue);
            };
            b.used.set(b.used.get() + u64::from(HOOK_EVERY));
            if b.exceeded.get()
                || b.used.get() > b.limits.instructions
                || Instant::now() > b.deadline.get()
            {
                b.exceeded.set(true);
                return Err(mlua::Error::runtime(BUDGET_EXCEEDED));
            }
            Ok(VmState::Continue)
        },
    )?;

    let real = lua.globals();
    let shared = lua.create_table()?;
    for name in BASE {
        shared.raw_set(*name, real.raw_get::<mlua::Value>(*name)?)?;
    }
    for name in LIBS {
        shared.raw_set(*name, read_only(&lua, real.raw_get::<Table>(*name)?)?)?;
    }
    // `getmetatable("")` would hand out the real string library (a write there would change
    // `s:upper()` for every NPC of the shard).
    lua.load(r#"getmetatable("").__metatable = false"#)
        .set_name("=sandbox")
        .exec()?;
    shared.raw_set(
        "print",
        lua.create_function(|_, s: mlua::Variadic<mlua::Value>| {
            let parts: Vec<String> = s
                .iter()
                .map(|v| v.to_string().unwrap_or_else(|_| "?".into()))
                .collect();
            tracing::info!(target: "npc_script", "{}", parts.join("\t"));
            Ok(())
        })?,
    )?;
    // `pcall`/`xpcall` that do not swallow a budget stop: once a call is over budget, every
    // protected call in it fails again at once, up to the top.
    let over: Function = lua.create_function(|lua, ()| {
        Ok(lua
            .app_data_ref::<Budget>()
            .is_some_and(|b| b.exceeded.get()))
    })?;
    let wrap: Function = lua
        .load(
            r#"
            local rawpcall, rawxpcall, over, msg = ...
            local function check(...)
                if over() then error(msg, 0) end
                return ...
            end
            return function(...) return check(rawpcall(...)) end,
                   function(...) return check(rawxpcall(...)) end
            "#,
        )
        .set_name("=sandbox")
        .into_function()?;
    let (pcall, xpcall): (Function, Function) = wrap.call((
        real.raw_get::<Function>("pcall")?,
        real.raw_get::<Function>("xpcall")?,
        over,
        BUDGET_EXCEEDED,
    ))?;
    shared.raw_set("pcall", pcall)?;
    shared.raw_set("xpcall", xpcall)?;
    api(&lua, &shared)?;

    let env_meta = lua.create_table()?;
    env_meta.raw_set("__index", shared)?;
    env_meta.raw_set("__metatable", false)?;
    // Set last: building the sandbox itself may need more than a tiny limit.
    lua.set_memory_limit(memory_limit)?;
    Ok((lua, env_meta))
}

/// An empty table that reads through to `lib` and refuses writes.
fn read_only(lua: &Lua, lib: Table) -> mlua::Result<Table> {
    let proxy = lua.create_table()?;
    let meta = lua.create_table()?;
    meta.raw_set("__index", lib)?;
    meta.raw_set(
        "__newindex",
        lua.create_function(|_, _: mlua::MultiValue| -> mlua::Result<()> {
            Err(mlua::Error::runtime("the standard libraries are read-only"))
        })?,
    )?;
    meta.raw_set("__metatable", false)?;
    proxy.set_metatable(Some(meta))?;
    Ok(proxy)
}
