//! Matrix products of bf16-rounded operands with f32 accumulation, for `--precision bf16` on
//! the CPU: dst (m, n) (+)= lhs (m, k) @ rhs (k, n), read from f32 through strides.
//!
//! Both operands are packed into bf16 blocks of 32 along k (`pack.rs`): lhs as 16-row
//! panels, rhs as 16-column panels in pair-interleaved (VNNI) order, the layout both the AMX
//! tile instruction and `vdpbf16ps` read. A kernel computes one 32 x 32 block of dst over
//! the whole of k with its sum in f32 registers or tiles, and the block is then stored or
//! added to dst. Three kernels, one per path (`Bf16Path`):
//! - `amx.rs`: AMX-BF16 tiles (Intel Sapphire Rapids and later);
//! - `avx512.rs`: AVX512-BF16 `vdpbf16ps` (Cooper Lake, Zen 4 and later);
//! - `portable.rs`: widen to f32 and multiply-add, anywhere else.
//!
//! Every element of dst is summed over k in blocks of 32 in order, by the same kernel
//! whatever m, n, the thread count or the block it falls in, so a row's result does not
//! depend on the other rows of the call (batch invariance, as in the f32 products).

mod amx;
mod avx512;
mod convert;
mod features;
mod layout;
mod pack;
#[cfg(target_arch = "x86_64")]
mod pack_avx512;
mod portable;

use super::matmul::SendPtr;
use anyhow::{bail, Result};
use layout::PANEL;
use pack::Packed;
use std::fmt;

/// The kernel that runs the bf16 products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Path {
    /// AMX-BF16 tiles (`tdpbf16ps`).
    Amx,
    /// AVX512-BF16 dot products (`vdpbf16ps`).
    Avx512Bf16,
    /// bf16 widened to f32, then f32 multiply-adds.
    Portable,
}

/// The environment variable that forces a path: amx, avx512-bf16 or portable.
pub const PATH_VAR: &str = "TPO_CPU_BF16";

impl Bf16Path {
    pub const ALL: [Bf16Path; 3] = [Bf16Path::Amx, Bf16Path::Avx512Bf16, Bf16Path::Portable];

    pub fn name(self) -> &'static str {
        match self {
            Bf16Path::Amx => "amx",
            Bf16Path::Avx512Bf16 => "avx512-bf16",
            Bf16Path::Portable => "portable",
        }
    }

    /// Whether this machine can run the path (for AMX: the CPU has it and the kernel
    /// granted this process the tile state).
    pub fn available(self) -> bool {
        match self {
            Bf16Path::Amx => amx::available(),
            Bf16Path::Avx512Bf16 => avx512::available(),
            Bf16Path::Portable => true,
        }
    }

    /// The fastest path this machine has.
    pub fn best() -> Bf16Path {
        *Bf16Path::ALL
            .iter()
            .find(|p| p.available())
            .expect("the portable path runs anywhere")
    }

    /// The path `TPO_CPU_BF16` names, or the best one; naming a path this machine cannot
    /// run is an error.
    pub fn chosen() -> Result<Bf16Path> {
        match std::env::var(PATH_VAR) {
            Ok(name) => {
                let Some(path) = Bf16Path::ALL.into_iter().find(|p| p.name() == name) else {
                    bail!("{PATH_VAR}={name}: expected amx, avx512-bf16 or portable");
                };
                if !path.available() {
                    bail!("{PATH_VAR}={name}: this CPU cannot run it");
                }
                Ok(path)
            }
            Err(_) => Ok(Bf16Path::best()),
        }
    }
}

impl fmt::Display for Bf16Path {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let what = match self {
            Bf16Path::Amx => "AMX-BF16 tiles",
            Bf16Path::Avx512Bf16 => "AVX512-BF16 vdpbf16ps",
            Bf16Path::Portable => "bf16 widened to f32 FMA",
        };
        write!(f, "{what}")
    }
}

/// A strided f32 matrix: element (i, j) at ptr + i * rs + j * cs.
#[derive(Clone, Copy)]
pub struct Strided {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

impl Strided {
    pub fn new(data: &[f32], rs: usize, cs: usize) -> Strided {
        Strided {
            ptr: data.as_ptr(),
            rs,
            cs,
        }
    }
}

// SAFETY: read-only views shared by the slabs of one product, within rayon::scope.
unsafe impl Send for Strided {}
unsafe impl Sync for Strided {}

/// dst (m, n), row stride dst_rs, = lhs (m, k) @ rhs (k, n) with both operands rounded to
/// bf16 and the sums in f32; added to dst when `accumulate`. Parallel over column chunks
/// of dst with rayon.
///
/// # Safety
/// For i < m, j < n, l < k: dst + i * dst_rs + j, lhs (i, l) and rhs (l, j) must be in
/// bounds, and no one else may access dst's written elements meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_bf16(
    path: Bf16Path,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: Strided,
    rhs: Strided,
    m: usize,
    n: usize,
    k: usize,
) {
    if empty(dst, dst_rs, accumulate, m, n, k) {
        return;
    }
    let a = pack::pack_lhs(lhs, m, k);
    run(
        path,
        &a,
        Rhs::Strided(rhs),
        dst,
        dst_rs,
        accumulate,
        m,
        n,
        k,
    );
}

/// Whether the product has nothing to sum (m, n or k zero); an empty sum assigns zeros.
///
/// # Safety
/// As `gemm_bf16`.
unsafe fn empty(
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    m: usize,
    n: usize,
    k: usize,
) -> bool {
    if m == 0 || n == 0 {
        return true;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::slice::from_raw_parts_mut(dst.add(i * dst_rs), n).fill(0.0);
            }
        }
        return true;
    }
    false
}

/// A whole rhs (k, n) packed once, for products that read it many times (a fixed weight).
pub struct PackedRhs {
    packed: Packed,
    k: usize,
    n: usize,
}

impl PackedRhs {
    /// Packs rhs (k, n).
    ///
    /// # Safety
    /// rhs (l, j) in bounds for l < k, j < n.
    pub unsafe fn new(rhs: Strided, k: usize, n: usize) -> PackedRhs {
        PackedRhs {
            packed: pack::pack_rhs(rhs, k, 0, n),
            k,
            n,
        }
    }
}

/// `gemm_bf16` with the rhs packed already: dst (m, n) (+)= lhs (m, k) @ rhs.
///
/// # Safety
/// As `gemm_bf16`, with k and n those of `rhs`.
pub unsafe fn gemm_bf16_packed(
    path: Bf16Path,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: Strided,
    rhs: &PackedRhs,
    m: usize,
) {
    let (n, k) = (rhs.n, rhs.k);
    if empty(dst, dst_rs, accumulate, m, n, k) {
        return;
    }
    let a = pack::pack_lhs(lhs, m, k);
    run(
        path,
        &a,
        Rhs::Packed(&rhs.packed),
        dst,
        dst_rs,
        accumulate,
        m,
        n,
        k,
    );
}

/// Where a product's rhs comes from: packed per column chunk as it runs, or packed already.
#[derive(Clone, Copy)]
enum Rhs<'a> {
    Strided(Strided),
    Packed(&'a Packed),
}

/// dst (m, n) (+)= the packed lhs @ rhs, in parallel column chunks.
#[allow(clippy::too_many_arguments)]
unsafe fn run(
    path: Bf16Path,
    a: &Packed,
    rhs: Rhs,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    m: usize,
    n: usize,
    k: usize,
) {
    let chunks = column_chunks(n, m * n * k);
    let dst = SendPtr(dst);
    let work = |(j0, j1): (usize, usize)| {
        // SAFETY: the chunk writes columns j0..j1 of dst only; chunks are disjoint, and
        // their bounds are multiples of 32 (two panels) but for the last.
        unsafe {
            let local;
            let (b, first) = match rhs {
                Rhs::Strided(rhs) => {
                    local = pack::pack_rhs(rhs, k, j0, j1);
                    (&local, 0)
                }
                Rhs::Packed(all) => (all, j0 / PANEL),
            };
            let out = dst.get().add(j0);
            run_chunk(path, a, b, first, out, dst_rs, accumulate, m, j1 - j0);
        }
    };
    if chunks.len() == 1 {
        chunks.into_iter().for_each(work);
    } else {
        let work = &work;
        rayon::scope(|s| {
            for chunk in chunks {
                s.spawn(move |_| work(chunk));
            }
        });
    }
}

/// Column chunks of dst, multiples of 32 wide: at most `MAX_CHUNK` (so that a chunk's
/// packed rhs stays in L2) and enough for two per thread on a product worth splitting.
fn column_chunks(n: usize, macs: usize) -> Vec<(usize, usize)> {
    const MAX_CHUNK: usize = 256;
    const PARALLEL_MIN_MACS: usize = 1 << 18;
    let threads = rayon::current_num_threads();
    let want = if macs < PARALLEL_MIN_MACS {
        1
    } else {
        2 * threads
    };
    let width = n
        .div_ceil(want)
        .div_ceil(2 * PANEL)
        .max(1)
        .saturating_mul(2 * PANEL)
        .min(MAX_CHUNK);
    (0..n)
        .step_by(width)
        .map(|j0| (j0, (j0 + width).min(n)))
        .collect()
}

/// One column chunk: every 32 x 32 block of dst's rows against the chunk's packed rhs,
/// whose panels start at `first`.
///
/// # Safety
/// dst + i * dst_rs + j in bounds and unshared for i < m, j < n.
#[allow(clippy::too_many_arguments)]
unsafe fn run_chunk(
    path: Bf16Path,
    a: &Packed,
    b: &Packed,
    first: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    m: usize,
    n: usize,
) {
    let mut block = [0.0f32; 2 * PANEL * 2 * PANEL];
    let blocks = a.blocks;
    let session = match path {
        Bf16Path::Amx => Some(amx::TileSession::start()),
        _ => None,
    };
    for i0 in (0..m).step_by(2 * PANEL) {
        let a0 = a.panel(i0 / PANEL);
        let a1 = a.panel(i0 / PANEL + 1);
        for j0 in (0..n).step_by(2 * PANEL) {
            let b0 = b.panel(first + j0 / PANEL);
            let b1 = b.panel(first + j0 / PANEL + 1);
            let rows = (m - i0).min(2 * PANEL);
            let cols = (n - j0).min(2 * PANEL);
            let corner = dst.add(i0 * dst_rs + j0);
            match (path, &session) {
                (Bf16Path::Amx, Some(tiles)) if rows == 2 * PANEL && cols == 2 * PANEL => {
                    tiles.block_into(a0, a1, b0, b1, blocks, corner, dst_rs, accumulate);
                    continue;
                }
                (Bf16Path::Amx, Some(tiles)) => tiles.block(a0, a1, b0, b1, blocks, &mut block),
                (Bf16Path::Avx512Bf16, _) => avx512::block(a0, a1, b0, b1, blocks, &mut block),
                _ => portable::block(a0, a1, b0, b1, blocks, &mut block),
            }
            for r in 0..rows {
                let out = std::slice::from_raw_parts_mut(corner.add(r * dst_rs), cols);
                let got = &block[r * 2 * PANEL..r * 2 * PANEL + cols];
                if accumulate {
                    out.iter_mut().zip(got).for_each(|(o, g)| *o += g);
                } else {
                    out.copy_from_slice(got);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
