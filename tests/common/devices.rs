//! One test body on every device: `on_every_device!(name, case)` makes the tests
//! `name::cpu`, `name::cuda_f32` and `name::cuda_bf16`, each calling `case(ops, tolerance)`
//! with that op set. The CUDA ones skip, saying why, where there is no GPU (and fail there
//! under TPO_REQUIRE_GPU, as scripts/gpu-check.sh sets it).

/// How closely a device's results follow the CPU's f32 ones.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tolerance {
    /// f32 storage: the results differ by summation order only.
    F32,
    /// bf16 storage: weights and activations rounded to 8 bits of mantissa.
    Bf16,
}

impl Tolerance {
    /// Relative tolerance of a summed log-prob or a logit.
    pub fn value(self) -> f64 {
        match self {
            Tolerance::F32 => 1e-4,
            Tolerance::Bf16 => 0.03,
        }
    }
}

#[macro_export]
macro_rules! on_every_device {
    ($name:ident, $case:ident) => {
        mod $name {
            use $crate::common::devices::Tolerance;

            #[test]
            fn cpu() {
                super::$case(tpo_engine::backend::cpu::Cpu::F32, Tolerance::F32);
            }

            #[test]
            fn cuda_f32() {
                if let Some(gpu) = $crate::common::gpu::gpu() {
                    let ops = tpo_engine::backend::cuda::CudaOps::<f32>::new(gpu.into());
                    super::$case(ops, Tolerance::F32);
                }
            }

            #[test]
            fn cuda_bf16() {
                if let Some(gpu) = $crate::common::gpu::gpu() {
                    let ops = tpo_engine::backend::cuda::CudaOps::<half::bf16>::new(gpu.into());
                    super::$case(ops, Tolerance::Bf16);
                }
            }
        }
    };
}
