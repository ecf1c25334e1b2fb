//! The op set the model needs, llm.c style: `op_forward(out, saved.., inputs.., dims)` and
//! `op_backward(dinp.., dweights.., dout, inputs.., saved.., dims)` side by side; parameter
//! gradients accumulate (`+=`), activation gradients are assigned.
//!
//! Only the CPU backend exists so far; it is f32 throughout and is the oracle every CUDA
//! kernel will be checked against. The `Backend` trait of DESIGN.md is introduced together
//! with the second implementation, so that its shape is fitted to two real backends.
//!
//! Shape letters used in comments: N rows (tokens of a packed batch), C model width,
//! H query heads, Hkv key/value heads, D head dim, I MLP width, V vocabulary, T positions.

pub mod cpu;
pub mod cuda;
pub mod kernels;
