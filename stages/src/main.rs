//! `cairn-worker`: runs one libtorch stage job for the cairn engine.
//! TODO(infra): full implementation (see cairn::worker protocol).
fn main() {}
