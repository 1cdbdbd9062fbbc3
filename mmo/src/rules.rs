//! The numbers of combat (see `mmo/README.md`).

/// A new player's level.
pub const START_LEVEL: i32 = 1;
/// Most hit points at `level`: 100, then 20 more per level.
pub fn max_hp(level: i32) -> i32 {
    100 + 20 * (level.max(1) - 1)
}
/// Damage of one of a player's hits at `level` to each NPC it reaches: 10, then 5 more
/// per level.
pub fn damage(level: i32) -> i32 {
    10 + 5 * (level.max(1) - 1)
}
/// Experience needed to go from `level` to the next (it is spent: `exp` starts again
/// from what is left over).
pub fn exp_to_next(level: i32) -> i32 {
    100 * level.max(1)
}
/// An NPC's hit points (when it spawns and respawns).
pub const NPC_HP: i32 = 30;
/// Experience for killing an NPC.
pub const NPC_EXP: i32 = 20;
/// An NPC that survives a hit strikes back the attacker for this much.
pub const NPC_HIT: i32 = 5;
/// Hit points a hurt player regains at each regeneration tick: a tenth of `max_hp`
/// (at least 1).
pub fn regen(max_hp: i32) -> i32 {
    (max_hp / 10).max(1)
}
