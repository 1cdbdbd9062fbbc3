//! # cport-cluster — one game world on many processes
//!
//! Gateways hold the clients and speak the course protocol; zones own rectangles of the
//! board and run the game ([`cport_mmo`]); core NATS carries batches between them
//! ([`bus`]). See ARCHITECTURE.md ("Cluster").

#![warn(missing_docs)]

pub mod bus;
pub mod gateway;
pub mod ops;
pub mod supervisor;
pub mod zone;
