//! The settings the ops take on every device: attention head counts, AdamW
//! hyperparameters and the sampling filters.

/// Head counts and size of an attention layer.
#[derive(Clone, Copy, Debug)]
pub struct AttentionDims {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
}

/// Hyperparameters of one AdamW update.
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based count of updates including this one (for bias correction).
    pub step: u32,
    /// Multiplies every gradient first (the clipping coefficient; 1 when not clipping).
    pub grad_scale: f32,
}

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 1 keeps every token.
    pub top_p: f32,
    /// 0 keeps every token.
    pub top_k: usize,
}

impl SamplingParams {
    pub const GREEDY: SamplingParams = SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
    };
}

/// Where a block of columns sits in a row-major buffer: rows of `stride` elements, the
/// block starting at column `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Columns {
    pub stride: usize,
    pub offset: usize,
}

impl Columns {
    /// Every column of rows of `width`: a dense buffer.
    pub const fn dense(width: usize) -> Columns {
        Columns {
            stride: width,
            offset: 0,
        }
    }
}
