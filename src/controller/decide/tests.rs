//! Table tests of `decide` (pure).
