//! The `Build` API (`kiln.dev/v1alpha1`): spec, status, conditions and their reasons (pure).
pub mod cli;
