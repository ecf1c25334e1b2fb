//! The op set the model needs, llm.c style: `op_forward(out, saved.., inputs.., dims)` and
//! `op_backward(dinp.., dweights.., dout, inputs.., saved.., dims)` side by side; parameter
//! gradients accumulate (`+=`), activation gradients are assigned.
//!
//! The CPU backend is f32 throughout and is the oracle every CUDA kernel is checked
//! against; the CUDA backend keeps bf16 weights and activations with f32 accumulation, f32
//! master weights and AdamW state. `device` picks one at run time. Rather than one `Backend`
//! trait over both, each backend has the same op names and shapes (the CUDA ones on device
//! buffers), and the model has one graph per backend (`model::training`, `model::cuda`):
//! the device code needs buffers, streams and scratch the CPU code has no use for.
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
