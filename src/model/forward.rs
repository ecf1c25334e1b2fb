//! The decoder forward pass over a packed batch of sequences: with KV caches that the
//! sequences continue (generation), or over fresh whole sequences without caches (a
//! sequence classifier's scores).

use super::config::{Head, ModelConfig};
use super::kv_cache::KvCache;
use super::params::ParamLayout;
use super::weights::{load_weights, StorageDtype};
use crate::backend::cpu::attention::{attention_forward, KvView};
use crate::backend::cpu::embedding::embedding_forward;
use crate::backend::cpu::matmul::matmul_forward;
use crate::backend::cpu::residual::residual_forward;
use crate::backend::cpu::rmsnorm::rmsnorm_forward;
use crate::backend::cpu::rope::rope_forward;
use crate::backend::cpu::swiglu::swiglu_forward;
use crate::backend::rope_table::{inv_frequencies, RopeTable};
use crate::backend::settings::AttentionDims;
use anyhow::{bail, Result};
use std::path::Path;

/// A loaded model: its config, the flat f32 parameters and precomputed rotary tables.
pub struct Model {
    pub config: ModelConfig,
    pub layout: ParamLayout,
    pub params: Vec<f32>,
    /// How the checkpoint stored its weights (checkpoints we write keep it).
    pub dtype: StorageDtype,
    /// Rotary inverse frequencies: (D/2).
    pub(super) inv_freq: Vec<f64>,
}

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// Every new token: (N, V).
    All,
    /// The last new token of each sequence: (S, V).
    Last,
}

/// Where attention finds the keys and values of the positions it attends to.
enum KvSource<'a, 'c> {
    /// Each sequence continues its cache, which the pass extends.
    Caches(&'a mut [&'c mut KvCache]),
    /// Fresh sequences seen whole: their own keys and values, kept one layer at a time.
    Fresh,
}

impl Model {
    /// Loads config.json and the safetensors weights of a causal LM's checkpoint directory.
    pub fn load(dir: &Path) -> Result<Model> {
        let path = dir.join("config.json");
        let config = ModelConfig::load(&path)?;
        if config.head != Head::CausalLm {
            bail!(
                "{}: {} is a sequence classifier (a reward model), not a causal language model",
                path.display(),
                config.class_name()
            );
        }
        Model::load_with_config(dir, config)
    }

    /// Loads the safetensors weights of a checkpoint directory whose config.json gave
    /// `config` (for callers that check the config before the weights are read).
    pub fn load_with_config(dir: &Path, config: ModelConfig) -> Result<Model> {
        let layout = ParamLayout::new(&config);
        let (params, dtype) = load_weights(dir, &config, &layout)?;
        Ok(Model::from_params(config, params, dtype))
    }

    pub fn from_params(config: ModelConfig, params: Vec<f32>, dtype: StorageDtype) -> Model {
        let layout = ParamLayout::new(&config);
        assert_eq!(
            params.len(),
            layout.len,
            "parameter buffer does not match the config"
        );
        let inv_freq = inv_frequencies(config.head_dim, config.rope_theta, &config.rope_scaling);
        Model {
            config,
            layout,
            params,
            dtype,
            inv_freq,
        }
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.num_hidden_layers, self.config.kv_dim())
    }

    /// Runs the new tokens `seqs[s]` of each sequence s, which continue `caches[s]` (empty
    /// for a fresh prompt), appends their keys/values there and returns logits of `rows`.
    ///
    /// The sequences are packed row after row (N = total new tokens), so sequences of
    /// different lengths need no padding. Every token must be below vocab_size and every
    /// sequence must end within max_context; callers check both against user input.
    pub fn forward(
        &self,
        seqs: &[&[u32]],
        caches: &mut [&mut KvCache],
        rows: LogitRows,
    ) -> Vec<f32> {
        assert_eq!(seqs.len(), caches.len(), "one cache per sequence");
        assert_eq!(
            self.config.head,
            Head::CausalLm,
            "only a causal LM has logits"
        );
        let x = self.decoder_forward(seqs, KvSource::Caches(caches));
        let x_out: Vec<f32> = match rows {
            LogitRows::All => x,
            LogitRows::Last => self.last_rows(&x, seqs),
        };
        let (c, v) = (self.config.hidden_size, self.config.vocab_size);
        let m = x_out.len() / c;
        let normed = self.final_norm(&x_out);
        let mut logits = vec![0.0f32; m * v]; // (M, V)
        matmul_forward(
            &mut logits,
            &normed,
            &self.params[self.layout.lm_head.clone()],
            None,
            m,
            c,
            v,
        );
        logits
    }

    /// A sequence classifier's logits, (S, L), for fresh whole sequences packed into one
    /// pass, as transformers' `...ForSequenceClassification` gives them: read at the last
    /// token that is not pad_token_id (the first token when every one is), or at the last
    /// token when the config has no pad_token_id. Attention is causal, so the tokens after
    /// that one are not run at all. Every sequence must have a token.
    pub fn classify(&self, seqs: &[&[u32]]) -> Vec<f32> {
        let cfg = &self.config;
        let Head::SequenceClassification { num_labels } = cfg.head else {
            panic!("only a sequence classifier has a score head");
        };
        let score = self
            .layout
            .score
            .clone()
            .expect("a classifier's layout has score");
        let read: Vec<&[u32]> = seqs
            .iter()
            .map(|seq| {
                assert!(!seq.is_empty(), "a sequence to classify needs a token");
                let last = match cfg.pad_token_id {
                    Some(pad) => seq.iter().rposition(|&t| t != pad).unwrap_or(0),
                    None => seq.len() - 1,
                };
                &seq[..=last]
            })
            .collect();
        let x = self.decoder_forward(&read, KvSource::Fresh);
        let hidden = self.final_norm(&self.last_rows(&x, &read));
        let mut logits = vec![0.0f32; read.len() * num_labels]; // (S, L)
        matmul_forward(
            &mut logits,
            &hidden,
            &self.params[score],
            None,
            read.len(),
            cfg.hidden_size,
            num_labels,
        );
        logits
    }

    /// The rows of the last token of each sequence: (S, C) from the packed (N, C).
    fn last_rows(&self, x: &[f32], seqs: &[&[u32]]) -> Vec<f32> {
        let c = self.config.hidden_size;
        let mut last = Vec::with_capacity(seqs.len() * c);
        let mut end = 0;
        for seq in seqs {
            end += seq.len();
            assert!(
                !seq.is_empty(),
                "a sequence with no new tokens has no last row"
            );
            last.extend_from_slice(&x[(end - 1) * c..end * c]);
        }
        last
    }

    /// The final norm of rows of the residual stream: (M, C).
    fn final_norm(&self, x: &[f32]) -> Vec<f32> {
        let mut normed = vec![0.0f32; x.len()];
        rmsnorm_forward(
            &mut normed,
            x,
            &self.params[self.layout.norm.clone()],
            self.config.rms_norm_eps,
            self.config.hidden_size,
        );
        normed
    }

    /// The decoder layers over the packed new tokens of `seqs`: returns the residual stream
    /// leaving the last layer, (N, C).
    fn decoder_forward(&self, seqs: &[&[u32]], mut kv: KvSource) -> Vec<f32> {
        let cfg = &self.config;
        let (c, im, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let dims = AttentionDims {
            n_head: cfg.num_attention_heads,
            n_kv_head: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        };
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let n = tokens.len();
        assert!(
            tokens.iter().all(|&t| (t as usize) < v),
            "token id beyond vocab_size"
        );
        let (mut row_seq, mut row_pos) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (s, seq) in seqs.iter().enumerate() {
            let start = match &kv {
                KvSource::Caches(caches) => caches[s].len(),
                KvSource::Fresh => 0,
            };
            assert!(
                start + seq.len() <= cfg.max_context,
                "sequence runs past max_context"
            );
            row_seq.extend(std::iter::repeat_n(s, seq.len()));
            row_pos.extend(start..start + seq.len());
        }
        let p = &self.params;
        let rope = RopeTable::for_positions(&self.inv_freq, &row_pos);

        let mut x = vec![0.0f32; n * c]; // (N, C) the residual stream
        embedding_forward(&mut x, &tokens, &p[self.layout.embed_tokens.clone()], c);
        let mut h = vec![0.0f32; n * c]; // (N, C)
        let qkv_dim = qd + 2 * kvd;
        let mut qkv = vec![0.0f32; n * qkv_dim]; // (N, (H + 2 Hkv) * D)
        let mut q = vec![0.0f32; n * qd]; // (N, H*D)
        let mut k = vec![0.0f32; n * kvd]; // (N, Hkv*D)
        let mut val = vec![0.0f32; n * kvd]; // (N, Hkv*D)
        let mut att = vec![0.0f32; n * qd]; // (N, H*D)
        let mut lse = vec![0.0f32; n * dims.n_head]; // (N, H)
        let mut gate_up = vec![0.0f32; n * 2 * im]; // (N, 2I): each row is gate, then up
        let mut act = vec![0.0f32; n * im]; // (N, I)
        let eps = cfg.rms_norm_eps;
        for (l, w) in self.layout.layers.iter().enumerate() {
            rmsnorm_forward(&mut h, &x, &p[w.input_layernorm.clone()], eps, c);
            // q, k and v are adjacent in the layout: one product, then split per row.
            let qkv_bias = w.qkv_bias().map(|r| &p[r]);
            matmul_forward(&mut qkv, &h, &p[w.qkv_proj()], qkv_bias, n, c, qkv_dim);
            for (r, row) in qkv.chunks_exact(qkv_dim).enumerate() {
                q[r * qd..(r + 1) * qd].copy_from_slice(&row[..qd]);
                k[r * kvd..(r + 1) * kvd].copy_from_slice(&row[qd..qd + kvd]);
                val[r * kvd..(r + 1) * kvd].copy_from_slice(&row[qd + kvd..]);
            }
            rope_forward(&mut q, &rope, dims.n_head);
            rope_forward(&mut k, &rope, dims.n_kv_head);
            let mut row = 0;
            let mut views: Vec<KvView> = Vec::with_capacity(seqs.len());
            match &mut kv {
                KvSource::Caches(caches) => {
                    for (seq, cache) in seqs.iter().zip(caches.iter_mut()) {
                        let r = row * kvd..(row + seq.len()) * kvd;
                        cache.append(l, &k[r.clone()], &val[r]);
                        row += seq.len();
                    }
                    views.extend(caches.iter().map(|cache| cache.view(l)));
                }
                KvSource::Fresh => {
                    for seq in seqs {
                        let r = row * kvd..(row + seq.len()) * kvd;
                        views.push(KvView {
                            k: &k[r.clone()],
                            v: &val[r],
                        });
                        row += seq.len();
                    }
                }
            }
            attention_forward(&mut att, &mut lse, &q, &views, &row_seq, &row_pos, dims);
            matmul_forward(&mut h, &att, &p[w.o_proj.clone()], None, n, qd, c);
            residual_forward(&mut x, &h);

            rmsnorm_forward(&mut h, &x, &p[w.post_attention_layernorm.clone()], eps, c);
            matmul_forward(&mut gate_up, &h, &p[w.gate_up_proj()], None, n, c, 2 * im);
            for (a, gu) in act.chunks_exact_mut(im).zip(gate_up.chunks_exact(2 * im)) {
                swiglu_forward(a, &gu[..im], &gu[im..]);
            }
            matmul_forward(&mut h, &act, &p[w.down_proj.clone()], None, n, im, c);
            residual_forward(&mut x, &h);
        }

        x
    }
}
