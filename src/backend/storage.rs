//! The element types of a model's weights and activations: f32 (the CPU, and the CUDA parity
//! tests) and bf16 (CUDA in production). Arithmetic is always f32; a storage type only says
//! how values are kept, and converts to and from f32.

use super::kernels::{Kernel, Typed};
use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

/// Any element a buffer of either device holds: storage types, f32 reductions, f64 sums and
/// i32/u32 indices.
pub trait Elem: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {}
impl<E: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static> Elem for E {}

/// A storage type of weights and activations.
pub trait Storage: Elem {
    /// The suffix of the kernels' entry points for this type.
    const SUFFIX: &'static str;
    /// The type as cuBLAS names it.
    const CUDA_TYPE: cudarc::cublas::sys::cudaDataType;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// This type's version of a kernel.
    fn kernel(t: Typed) -> Kernel;
}

impl Storage for f32 {
    const SUFFIX: &'static str = "f32";
    const CUDA_TYPE: cudarc::cublas::sys::cudaDataType =
        cudarc::cublas::sys::cudaDataType::CUDA_R_32F;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn kernel(t: Typed) -> Kernel {
        t.f32
    }
}

impl Storage for half::bf16 {
    const SUFFIX: &'static str = "bf16";
    const CUDA_TYPE: cudarc::cublas::sys::cudaDataType =
        cudarc::cublas::sys::cudaDataType::CUDA_R_16BF;
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn kernel(t: Typed) -> Kernel {
        t.bf16
    }
}
