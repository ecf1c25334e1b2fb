//! The DPO loss on the device: one thread per pair, f64 scalar math, the twin of
//! `train::loss::dpo_loss`. Its per-pair stats rows, read back, fill the same `DpoTotals`
//! (`DpoTotals::add_pair`) and so the same metrics as the CPU path.

use super::{check_lens, Gpu};
use crate::backend::kernels;
use crate::train::loss::{DpoConfig, DpoLossType, PAIR_STATS};
use anyhow::{Context, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};

impl Gpu {
    /// One optimizer micro-batch of P pairs. policy, reference: (2P) f32 per-sequence
    /// summed completion log-probs, chosen then rejected of each pair interleaved [c0, r0,
    /// c1, r1, ...] (the order the trainer packs sequences; the reference sums are stored
    /// as f32, the precision `sequence_sums` gives); n_tokens: (2P) i32 completion lengths
    /// in the same order (IPO's per-token means); dseq: (2P) f32 assigned, d(loss)/d(policy
    /// sum); stats: (P, 6) f64 assigned, per pair the row `DpoTotals::add_pair` takes (loss
    /// share including the NLL term, reward_chosen, reward_rejected, logp_chosen,
    /// logp_rejected, nll). `batch_pairs` and `batch_chosen_tokens` are the optimizer
    /// batch's, as in the CPU twin.
    #[allow(clippy::too_many_arguments)]
    pub fn dpo_loss(
        &self,
        dseq: &mut impl DevicePtrMut<f32>,
        stats: &mut impl DevicePtrMut<f64>,
        policy: &impl DevicePtr<f32>,
        reference: &impl DevicePtr<f32>,
        n_tokens: &impl DevicePtr<i32>,
        cfg: &DpoConfig,
        batch_pairs: usize,
        batch_chosen_tokens: usize,
    ) -> Result<()> {
        let n = policy.len();
        if !n.is_multiple_of(2) || n / 2 > i32::MAX as usize {
            anyhow::bail!("dpo_loss: {n} sequences are not chosen/rejected pairs");
        }
        let pairs = n / 2;
        check_lens(
            "dpo_loss",
            &[dseq.len(), reference.len(), n_tokens.len()],
            n,
        )?;
        check_lens("dpo_loss stats", &[stats.len()], pairs * PAIR_STATS)?;
        if pairs == 0 {
            return Ok(());
        }
        let loss_type: i32 = match cfg.loss_type {
            DpoLossType::Sigmoid => 0,
            DpoLossType::Ipo => 1,
            DpoLossType::Hinge => 2,
        };
        // As the CPU twin computes them.
        let per_pair = 1.0 / batch_pairs as f64;
        let chosen_tokens = batch_chosen_tokens as f64;
        let pairs32 = pairs as i32;
        let (out, st) = (self.ptr_mut(dseq), self.ptr_mut(stats));
        let (pol, re, nt) = (self.ptr(policy), self.ptr(reference), self.ptr(n_tokens));
        let f = self.function(kernels::dpo::DPO_LOSS)?;
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&out)
            .arg(&st)
            .arg(&pol)
            .arg(&re)
            .arg(&nt)
            .arg(&pairs32)
            .arg(&loss_type)
            .arg(&cfg.beta)
            .arg(&cfg.label_smoothing)
            .arg(&cfg.nll_alpha)
            .arg(&per_pair)
            .arg(&chosen_tokens);
        // SAFETY: the arguments match the kernel's signature (f64 scalars as double); dseq,
        // policy, reference and n_tokens hold 2P elements and stats P rows of 6 (checked).
        unsafe { launch.launch(Self::elementwise(pairs)) }.context("dpo_loss")?;
        Ok(())
    }
}
