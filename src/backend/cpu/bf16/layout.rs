//! The packed layout's units, shared by the packers and the kernels (see `pack.rs`).

/// Panel height (lhs rows) or width (rhs columns).
pub const PANEL: usize = 16;
/// The k covered by one block.
pub const BLOCK: usize = 32;

/// One 64-byte line of a block: 32 bf16.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Line(pub [u16; BLOCK]);
