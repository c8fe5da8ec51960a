//! Sequence mixers: each a CPU reference behind one function signature.

pub mod conv;
pub mod delta_rule;
