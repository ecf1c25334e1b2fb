//! What the GPU tests share: opening the device (a skip, with the reason, where there is
//! none), seeded inputs, the storage types' conversions, and buffers to and from the device.

use cudarc::driver::CudaSlice;
use tpo_engine::backend::cuda::Gpu;
pub use tpo_engine::backend::storage::Storage;

/// Device 0, or None with the reason printed. scripts/gpu-check.sh sets TPO_REQUIRE_GPU: on
/// the GPU machine a skip is a failure.
pub fn gpu() -> Option<Gpu> {
    match Gpu::open(0) {
        Ok(gpu) => Some(gpu),
        Err(why) => {
            assert!(
                std::env::var_os("TPO_REQUIRE_GPU").is_none(),
                "TPO_REQUIRE_GPU is set, but: {why}"
            );
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// Uniform values in [-1, 1) from a seeded LCG.
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// |got - want| <= tol (|want| + 5% of the largest |want|) + 1e-6, element-wise: NaN (an
/// unwritten element) fails.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-6);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (w.abs() + scale * 0.05) + 1e-6,
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// The values as T holds them.
pub fn round_to<T: Storage>(v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(|x| T::from_f32(x).to_f32()).collect()
}

pub fn upload<T: Storage>(gpu: &Gpu, v: &[f32]) -> CudaSlice<T> {
    gpu.stream
        .clone_htod(&v.iter().map(|&x| T::from_f32(x)).collect::<Vec<T>>())
        .unwrap()
}

pub fn download<T: Storage>(gpu: &Gpu, s: &CudaSlice<T>) -> Vec<f32> {
    gpu.stream
        .clone_dtoh(s)
        .unwrap()
        .into_iter()
        .map(T::to_f32)
        .collect()
}

/// A device buffer of n NaNs: an output that must be assigned and is not shows.
pub fn nans<T: Storage>(gpu: &Gpu, n: usize) -> CudaSlice<T> {
    upload::<T>(gpu, &vec![f32::NAN; n])
}
