//! nix-vmtest: NixOS-style VM integration tests with a Rust test driver.
//!
//! See ARCHITECTURE.md for how the parts fit together.

pub mod config;
pub mod driver;
pub mod log;
pub mod machine;
pub mod plugin;
pub mod script;
pub mod spec;
pub mod vlan;
