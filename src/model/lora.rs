//! LoRA adapters of a Llama-family model, as PEFT defines them: for each targeted Linear
//! W (out, in) of each decoder layer, y = x W^T + s * (x A^T) B^T with A: (r, in),
//! B: (out, r) and s = alpha / r (rsLoRA: alpha / sqrt(r)). The base weights stay frozen;
//! only A and B train.
//!
//! Like the model's weights, every adapter tensor lives in one flat f32 buffer with named
//! ranges (`LoraLayout`), so AdamW, clipping and roll-back treat adapters as one vector.
//! Initialised as PEFT's default, so an untrained adapter is the base model exactly: A
//! Kaiming-uniform (bound 1/sqrt(in)), B zero.

use super::config::ModelConfig;
use super::params::ParamLayout;
use crate::backend::rng::Rng;
use anyhow::{bail, Result};
use std::ops::Range;

/// A Linear of a decoder layer an adapter can target, by PEFT's module name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// PEFT's `target_modules` name.
    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The module's path within a decoder layer (`self_attn.q_proj`).
    pub fn path(self) -> String {
        let block = match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            _ => "mlp",
        };
        format!("{block}.{}", self.name())
    }

    pub fn parse(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The targets PEFT module `names` name (or all-linear); none: every Linear.
    pub fn parse_names(names: &[String]) -> Result<Vec<Target>> {
        if names.is_empty() || names.iter().any(|n| n == "all-linear") {
            return Ok(Target::ALL.to_vec());
        }
        names
            .iter()
            .map(|n| {
                Target::parse(n.trim()).ok_or_else(|| {
                    let known: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
                    anyhow::anyhow!(
                        "no module {n:?}; expected {} or all-linear",
                        known.join(", ")
                    )
                })
            })
            .collect()
    }

    /// (out, in) of the Linear.
    pub fn shape(self, cfg: &ModelConfig) -> (usize, usize) {
        let (c, i) = (cfg.hidden_size, cfg.intermediate_size);
        match self {
            Target::Q => (cfg.q_dim(), c),
            Target::K | Target::V => (cfg.kv_dim(), c),
            Target::O => (c, cfg.q_dim()),
            Target::Gate | Target::Up => (i, c),
            Target::Down => (c, i),
        }
    }

    /// The base weight's range in the model's flat buffer.
    pub fn base_range(self, layout: &ParamLayout, layer: usize) -> Range<usize> {
        let p = &layout.layers[layer];
        match self {
            Target::Q => p.q_proj.clone(),
            Target::K => p.k_proj.clone(),
            Target::V => p.v_proj.clone(),
            Target::O => p.o_proj.clone(),
            Target::Gate => p.gate_proj.clone(),
            Target::Up => p.up_proj.clone(),
            Target::Down => p.down_proj.clone(),
        }
    }
}

/// What an adapter is: its rank, scaling, dropout and targets.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    /// rsLoRA: scale alpha / sqrt(r) instead of alpha / r.
    pub rslora: bool,
    pub dropout: f64,
    /// In `Target::ALL`'s order, each once.
    pub targets: Vec<Target>,
}

impl LoraConfig {
    /// Checks the values and puts the targets in order.
    pub fn new(
        r: usize,
        alpha: f64,
        rslora: bool,
        dropout: f64,
        mut targets: Vec<Target>,
    ) -> Result<LoraConfig> {
        if r == 0 {
            bail!("LoRA rank 0: expected at least 1");
        }
        if !(alpha.is_finite() && alpha > 0.0) {
            bail!("LoRA alpha {alpha}: expected a positive number");
        }
        if !(0.0..1.0).contains(&dropout) {
            bail!("LoRA dropout {dropout}: expected at least 0 and below 1");
        }
        targets.sort();
        targets.dedup();
        if targets.is_empty() {
            bail!("LoRA: no target module");
        }
        Ok(LoraConfig {
            r,
            alpha,
            rslora,
            dropout,
            targets,
        })
    }

    /// s, the factor of the adapter's product.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// One adapted Linear: where its A (r, in) and B (out, r) are in the adapter's buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptedLinear {
    pub layer: usize,
    pub target: Target,
    pub out_dim: usize,
    pub in_dim: usize,
    pub a: Range<usize>,
    pub b: Range<usize>,
}

/// Every adapted Linear of a model, layer by layer in `Target::ALL`'s order.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraLayout {
    pub linears: Vec<AdaptedLinear>,
    pub len: usize,
}

impl LoraLayout {
    pub fn new(cfg: &ModelConfig, lora: &LoraConfig) -> LoraLayout {
        let mut next = 0;
        let mut linears = vec![];
        for layer in 0..cfg.num_hidden_layers {
            for &target in &lora.targets {
                let (out_dim, in_dim) = target.shape(cfg);
                let a = next..next + lora.r * in_dim;
                let b = a.end..a.end + out_dim * lora.r;
                next = b.end;
                linears.push(AdaptedLinear {
                    layer,
                    target,
                    out_dim,
                    in_dim,
                    a,
                    b,
                });
            }
        }
        LoraLayout { linears, len: next }
    }

    /// The adapted Linear `target` of `layer`, if it is adapted.
    pub fn find(&self, layer: usize, target: Target) -> Option<&AdaptedLinear> {
        self.linears
            .iter()
            .find(|l| l.layer == layer && l.target == target)
    }
}

/// An adapter: its config, layout and weights.
#[derive(Clone, Debug)]
pub struct Adapter {
    pub config: LoraConfig,
    pub layout: LoraLayout,
    /// (len) every A and B, as the layout places them.
    pub params: Vec<f32>,
}

impl Adapter {
    /// A new adapter as PEFT initialises one: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's
    /// Kaiming-uniform with a = sqrt(5)), B = 0; seeded.
    pub fn init(cfg: &ModelConfig, lora: LoraConfig, seed: u64) -> Adapter {
        let layout = LoraLayout::new(cfg, &lora);
        let mut params = vec![0.0f32; layout.len];
        let mut rng = Rng::new(seed);
        for l in &layout.linears {
            let bound = 1.0 / (l.in_dim as f32).sqrt();
            for x in &mut params[l.a.clone()] {
                *x = (2.0 * rng.uniform() - 1.0) * bound;
            }
        }
        Adapter {
            config: lora,
            layout,
            params,
        }
    }

    /// Whether the adapter leaves its base model as it is (every B zero, as a new one).
    pub fn is_identity(&self) -> bool {
        self.layout
            .linears
            .iter()
            .all(|l| self.params[l.b.clone()].iter().all(|&x| x == 0.0))
    }

    /// `base` with the adapter folded in: a new model (the base is left as it is).
    pub fn merged(&self, base: &super::Model) -> Result<super::Model> {
        let mut params = base.params.clone();
        self.merge_into(&base.layout, &mut params)?;
        Ok(super::Model::from_params(
            base.config.clone(),
            params,
            base.dtype,
        ))
    }

    /// The merged weights: W += s * B @ A for every adapted Linear of `base` (laid out by
    /// `layout`), summed in f64.
    pub fn merge_into(&self, layout: &ParamLayout, base: &mut [f32]) -> Result<()> {
        if base.len() != layout.len {
            bail!(
                "merge: the model holds {} parameters, its layout {}",
                base.len(),
                layout.len
            );
        }
        let s = self.config.scale();
        let r = self.config.r;
        for l in &self.layout.linears {
            let w = &mut base[l.target.base_range(layout, l.layer)];
            let (a, b) = (&self.params[l.a.clone()], &self.params[l.b.clone()]);
            if w.len() != l.out_dim * l.in_dim {
                bail!(
                    "merge: layer {} {} holds {} weights, the adapter expects {} x {}",
                    l.layer,
                    l.target.name(),
                    w.len(),
                    l.out_dim,
                    l.in_dim
                );
            }
            for o in 0..l.out_dim {
                for i in 0..l.in_dim {
                    let delta: f64 = (0..r)
                        .map(|k| f64::from(b[o * r + k]) * f64::from(a[k * l.in_dim + i]))
                        .sum();
                    let cell = &mut w[o * l.in_dim + i];
                    *cell = (f64::from(*cell) + s * delta) as f32;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn tiny() -> ModelConfig {
        ModelConfig::from_json(&serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 8, "intermediate_size": 12,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "vocab_size": 16,
        }))
        .unwrap()
    }

    #[test]
    fn the_layout_holds_a_and_b_of_every_target_of_every_layer() {
        let cfg = tiny();
        let lora =
            LoraConfig::new(3, 6.0, false, 0.0, vec![Target::V, Target::Q, Target::Down]).unwrap();
        assert_eq!(lora.targets, vec![Target::Q, Target::V, Target::Down]);
        assert_eq!(lora.scale(), 2.0);
        let layout = LoraLayout::new(&cfg, &lora);
        assert_eq!(layout.linears.len(), 6);
        // q: (8, 8), v: (4, 8) with one KV head of 4, down: (8, 12); A (3, in), B (out, 3).
        let per_layer = 3 * 8 + 8 * 3 + 3 * 8 + 4 * 3 + 3 * 12 + 8 * 3;
        assert_eq!(layout.len, 2 * per_layer);
        let v1 = layout.find(1, Target::V).unwrap();
        assert_eq!((v1.out_dim, v1.in_dim), (4, 8));
        assert_eq!(v1.a.len(), 3 * 8);
        assert_eq!(v1.b.len(), 4 * 3);
        assert!(layout.find(0, Target::K).is_none());
        let mut ranges: Vec<Range<usize>> = layout
            .linears
            .iter()
            .flat_map(|l| [l.a.clone(), l.b.clone()])
            .collect();
        ranges.sort_by_key(|r| r.start);
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(ranges.last().unwrap().end, layout.len);
        let rs = LoraConfig::new(4, 8.0, true, 0.1, Target::ALL.to_vec()).unwrap();
        assert_eq!(rs.scale(), 4.0);
    }

    #[test]
    fn bad_configs_are_refused() {
        for (r, alpha, dropout, targets) in [
            (0, 1.0, 0.0, vec![Target::Q]),
            (1, 0.0, 0.0, vec![Target::Q]),
            (1, f64::NAN, 0.0, vec![Target::Q]),
            (1, 1.0, 1.0, vec![Target::Q]),
            (1, 1.0, -0.1, vec![Target::Q]),
            (1, 1.0, 0.0, vec![]),
        ] {
            assert!(LoraConfig::new(r, alpha, false, dropout, targets).is_err());
        }
    }

    #[test]
    fn a_new_adapter_is_the_base_model_and_merging_adds_s_b_a() {
        let cfg = tiny();
        let layout = ParamLayout::new(&cfg);
        let base: Vec<f32> = (0..layout.len).map(|i| (i % 7) as f32 * 0.1).collect();
        let lora = LoraConfig::new(2, 4.0, false, 0.0, Target::ALL.to_vec()).unwrap();
        let mut adapter = Adapter::init(&cfg, lora, 7);
        for l in &adapter.layout.linears {
            let bound = 1.0 / (l.in_dim as f32).sqrt();
            let a = &adapter.params[l.a.clone()];
            assert!(a.iter().all(|x| x.abs() <= bound) && a.iter().any(|x| *x != 0.0));
            assert!(adapter.params[l.b.clone()].iter().all(|x| *x == 0.0));
        }
        let mut merged = base.clone();
        adapter.merge_into(&layout, &mut merged).unwrap();
        assert_eq!(merged, base, "B = 0: the base model exactly");
        assert!(adapter.is_identity());

        // With B set, one weight by hand: W[o][i] + s * sum_k B[o][k] A[k][i], s = 2.
        let down = adapter.layout.find(1, Target::Down).unwrap().clone();
        for (j, x) in adapter.params[down.b.clone()].iter_mut().enumerate() {
            *x = 0.01 * (j as f32 + 1.0);
        }
        assert!(!adapter.is_identity());
        let mut merged = base.clone();
        adapter.merge_into(&layout, &mut merged).unwrap();
        let w0 = Target::Down.base_range(&layout, 1).start;
        let (o, i) = (3, 5);
        let a = &adapter.params[down.a.clone()];
        let b = &adapter.params[down.b.clone()];
        let want = base[w0 + o * down.in_dim + i] as f64
            + 2.0
                * (0..2)
                    .map(|k| b[o * 2 + k] as f64 * a[k * down.in_dim + i] as f64)
                    .sum::<f64>();
        assert!((merged[w0 + o * down.in_dim + i] as f64 - want).abs() < 1e-6);
        // Only the adapted tensor moved.
        let changed: Vec<usize> = (0..layout.len).filter(|&k| merged[k] != base[k]).collect();
        let range = Target::Down.base_range(&layout, 1);
        assert!(!changed.is_empty() && changed.iter().all(|k| range.contains(k)));
    }
}
