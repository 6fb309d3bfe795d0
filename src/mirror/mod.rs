//! The pull-through cache for upstream registries.
