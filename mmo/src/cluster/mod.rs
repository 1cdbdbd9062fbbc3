//! The game as one zone of a cluster: the board cut into rectangles ([`Layout`]), the
//! messages gateways and zones exchange on the bus ([`wire`]). The processes themselves
//! (NATS, the gateway, the zone's host) are in the `cport-cluster` crate.

pub mod layout;
pub(crate) mod state;
pub mod wire;

pub use layout::{Layout, Rect, MAX_ZONES};
pub use state::{ZoneSetup, ZoneStats};
