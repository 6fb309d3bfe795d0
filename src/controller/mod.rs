//! The controller that turns `Build` objects into build pods and status.
pub mod cli;
