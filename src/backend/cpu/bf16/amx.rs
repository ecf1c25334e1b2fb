//! The bf16 block kernel on AMX-BF16: a 32 x 32 block of the result is four 16 x 16 f32
//! tiles (tmm0-3), held over the whole of k; each block of 32 along k loads two lhs tiles
//! (tmm4-5) and two rhs tiles (tmm6-7) and issues four `tdpbf16ps`.
//!
//! Linux grants a process the tile state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`); `available` asks once. A thread loads the tile configuration at
//! the start of each column chunk (`TileSession`) and releases the tiles after it.

use super::layout::PANEL;

/// Whether the CPU has AMX-BF16 and the kernel granted this process the tile state.
pub fn available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *GRANTED.get_or_init(|| {
            use std::arch::x86_64::__cpuid_count;
            // CPUID.(7, 0).EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
            let edx = __cpuid_count(7, 0).edx;
            if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a request for permission; it changes nothing else.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            };
            rc == 0
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// The tile configuration loaded on this thread for one column chunk; released on drop.
pub struct TileSession(());

/// Palette 1 with all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn all_full() -> TileConfig {
        let mut cfg = [0u8; 64];
        cfg[0] = 1;
        for t in 0..8 {
            cfg[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            cfg[48 + t] = PANEL as u8;
        }
        TileConfig(cfg)
    }
}

impl TileSession {
    /// Loads the tile configuration on this thread. Only called where `available()`.
    pub fn start() -> TileSession {
        assert!(
            available(),
            "AMX tiles used where the CPU or the kernel lacks them"
        );
        let cfg = TileConfig::all_full();
        // SAFETY: AMX is available (checked above) and cfg is a valid palette-1 config.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack));
        }
        let _ = cfg;
        TileSession(())
    }

    /// As `portable::block`.
    ///
    /// # Safety
    /// As `portable::block`.
    pub unsafe fn block(
        &self,
        a0: *const u16,
        a1: *const u16,
        b0: *const u16,
        b1: *const u16,
        blocks: usize,
        out: &mut [f32; 4 * PANEL * PANEL],
    ) {
        // The local block is a 32 x 32 dst of its own.
        self.block_into(a0, a1, b0, b1, blocks, out.as_mut_ptr(), 2 * PANEL, false);
    }
}

impl TileSession {
    /// As `block`, but a full 32 x 32 block of dst itself: row i, column j at
    /// dst + i * dst_rs + j. Loads it into the tiles first when `accumulate`, else starts
    /// from zero, and stores the tiles straight back: no copy through a local block.
    ///
    /// # Safety
    /// As `portable::block`, and the 32 x 32 block of dst in bounds and unshared.
    #[allow(clippy::too_many_arguments, unused_variables)]
    pub unsafe fn block_into(
        &self,
        a0: *const u16,
        a1: *const u16,
        b0: *const u16,
        b1: *const u16,
        blocks: usize,
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
    ) {
        let stride = dst_rs * 4;
        let lower = dst.add(PANEL * dst_rs);
        #[cfg(target_arch = "x86_64")]
        std::arch::asm!(
            "test {acc}, {acc}",
            "jz 3f",
            "tileloadd tmm0, [{c} + {row}]",
            "tileloadd tmm1, [{c} + {row} + 64]",
            "tileloadd tmm2, [{c2} + {row}]",
            "tileloadd tmm3, [{c2} + {row} + 64]",
            "jmp 2f",
            "3:",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {line}]",
            "tileloadd tmm5, [{a1} + {line}]",
            "tileloadd tmm6, [{b0} + {line}]",
            "tileloadd tmm7, [{b1} + {line}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {blocks}",
            "jnz 2b",
            "tilestored [{c} + {row}], tmm0",
            "tilestored [{c} + {row} + 64], tmm1",
            "tilestored [{c2} + {row}], tmm2",
            "tilestored [{c2} + {row} + 64], tmm3",
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            blocks = inout(reg) blocks => _,
            acc = in(reg) usize::from(accumulate),
            line = in(reg) 64usize,
            row = in(reg) stride,
            c = in(reg) dst,
            c2 = in(reg) lower,
            options(nostack),
        );
    }
}

impl Drop for TileSession {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by start() on this thread.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem));
        }
    }
}
