//! Training the policy on the CPU or a CUDA device: sequence log-probs through the model's training
//! graph, the DPO and SFT losses, AdamW with schedules and clipping, micro-batches packed by
//! a token budget with gradient accumulation, and the run directory (metrics, checkpoints).

pub mod batching;
pub mod data;

pub mod loss;
pub mod optimizer;
pub mod run;
pub mod trainer;

pub use loss::{DpoConfig, DpoLossType};
pub use optimizer::{LrSchedule, OptimizerConfig};
pub use trainer::{Example, Objective, TrainConfig};
