//! The op set the model needs, llm.c style: `op_forward(out, saved.., inputs.., dims)` and
//! `op_backward(dinp.., dweights.., dout, inputs.., saved.., dims)` side by side; parameter
//! gradients accumulate (`+=`), activation gradients are assigned.
//!
//! Each op lives three times under one name: `kernels/<op>.cu`, its launcher in
//! `cuda/<op>.rs` (a method of `Gpu`: the stream is all it adds) and its CPU twin in
//! `cpu/<op>.rs`, the oracle every kernel is checked against, with the same argument order
//! and shapes, and errors returned rather than asserted. `ops::Ops` is the op set as one
//! interface, instantiated by `cpu::Cpu` (f32) and `cuda::CudaOps<T>` (bf16 or f32 storage,
//! f32 accumulation); the model's graph (`model::graph`) is written once over it. The
//! device-neutral types the ops take are here: `settings` (attention dims, AdamW, sampling),
//! `rng`, `rope_table` and `storage`. `device` picks a device at run time.
//!
//! Shape letters used in comments: N rows (tokens of a packed batch), C model width,
//! H query heads, Hkv key/value heads, D head dim, I MLP width, V vocabulary, T positions.

pub mod cpu;
pub mod cuda;
pub mod device;
pub mod kernels;
pub mod ops;
pub mod rng;
pub mod rope_table;
pub mod settings;
pub mod storage;
