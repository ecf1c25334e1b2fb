//! Where each parameter tensor lives in the one flat f32 buffer that holds a model.
//!
//! Parameters (and, for training, their gradients and optimizer state) are single flat
//! buffers with named views, so whole-model loops (AdamW, zeroing, norms) are one loop.
//! The projections of one layer are laid out back to back in checkpoint order (q, k, v and
//! gate, up), so fused products can treat them as one matrix.

use super::config::{Head, ModelConfig};
use std::ops::Range;

/// The ranges of one decoder layer's tensors. Shapes use the legend of `backend`.
#[derive(Clone, Debug)]
pub struct LayerParams {
    pub input_layernorm: Range<usize>,          // (C)
    pub q_proj: Range<usize>,                   // (H*D, C)
    pub k_proj: Range<usize>,                   // (Hkv*D, C)
    pub v_proj: Range<usize>,                   // (Hkv*D, C)
    pub q_bias: Option<Range<usize>>,           // (H*D)
    pub k_bias: Option<Range<usize>>,           // (Hkv*D)
    pub v_bias: Option<Range<usize>>,           // (Hkv*D)
    pub o_proj: Range<usize>,                   // (C, H*D)
    pub post_attention_layernorm: Range<usize>, // (C)
    pub gate_proj: Range<usize>,                // (I, C)
    pub up_proj: Range<usize>,                  // (I, C)
    pub down_proj: Range<usize>,                // (C, I)
}

impl LayerParams {
    /// q_proj, k_proj and v_proj as one ((H + 2 Hkv) * D, C) matrix.
    pub fn qkv_proj(&self) -> Range<usize> {
        self.q_proj.start..self.v_proj.end
    }

    /// Their biases as one ((H + 2 Hkv) * D) vector, where the model has them.
    pub fn qkv_bias(&self) -> Option<Range<usize>> {
        match (&self.q_bias, &self.v_bias) {
            (Some(q), Some(v)) => Some(q.start..v.end),
            _ => None,
        }
    }

    /// gate_proj and up_proj as one (2 I, C) matrix.
    pub fn gate_up_proj(&self) -> Range<usize> {
        self.gate_proj.start..self.up_proj.end
    }
}

#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub embed_tokens: Range<usize>, // (V, C)
    pub layers: Vec<LayerParams>,
    pub norm: Range<usize>, // (C)
    /// (V, C); the same range as embed_tokens when the embeddings are tied. Empty for a
    /// sequence classifier, which has no LM head.
    pub lm_head: Range<usize>,
    /// (L, C) score.weight of a sequence classifier with L labels; None for a causal LM.
    pub score: Option<Range<usize>>,
    pub len: usize,
}

/// One tensor of a checkpoint: its Hugging Face name, shape and place in the flat buffer.
#[derive(Clone, Debug)]
pub struct TensorSlot {
    pub name: String,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
}

impl ParamLayout {
    pub fn new(cfg: &ModelConfig) -> ParamLayout {
        let (c, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let mut next = 0;
        let mut take = |n: usize| {
            next += n;
            next - n..next
        };
        let embed_tokens = take(v * c);
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| LayerParams {
                input_layernorm: take(c),
                q_proj: take(qd * c),
                k_proj: take(kvd * c),
                v_proj: take(kvd * c),
                q_bias: cfg.attention_bias.then(|| take(qd)),
                k_bias: cfg.attention_bias.then(|| take(kvd)),
                v_bias: cfg.attention_bias.then(|| take(kvd)),
                o_proj: take(c * qd),
                post_attention_layernorm: take(c),
                gate_proj: take(i * c),
                up_proj: take(i * c),
                down_proj: take(c * i),
            })
            .collect();
        let norm = take(c);
        // A classifier has no LM head to tie, whatever tie_word_embeddings says.
        let (lm_head, score) = match cfg.head {
            Head::CausalLm if cfg.tie_word_embeddings => (embed_tokens.clone(), None),
            Head::CausalLm => (take(v * c), None),
            Head::SequenceClassification { num_labels } => (take(0), Some(take(num_labels * c))),
        };
        ParamLayout {
            embed_tokens,
            layers,
            norm,
            lm_head,
            score,
            len: next,
        }
    }

    /// Every tensor a checkpoint stores, with transformers' names (no lm_head when tied, nor
    /// in a classifier, which stores score.weight instead).
    pub fn tensors(&self, cfg: &ModelConfig) -> Vec<TensorSlot> {
        let (c, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let mut out = vec![];
        let mut push = |name: String, shape: Vec<usize>, range: &Range<usize>| {
            out.push(TensorSlot {
                name,
                shape,
                range: range.clone(),
            })
        };
        push(
            "model.embed_tokens.weight".into(),
            vec![v, c],
            &self.embed_tokens,
        );
        for (l, p) in self.layers.iter().enumerate() {
            let pre = format!("model.layers.{l}");
            push(
                format!("{pre}.input_layernorm.weight"),
                vec![c],
                &p.input_layernorm,
            );
            push(
                format!("{pre}.self_attn.q_proj.weight"),
                vec![qd, c],
                &p.q_proj,
            );
            push(
                format!("{pre}.self_attn.k_proj.weight"),
                vec![kvd, c],
                &p.k_proj,
            );
            push(
                format!("{pre}.self_attn.v_proj.weight"),
                vec![kvd, c],
                &p.v_proj,
            );
            for (name, dim, r) in [
                ("q_proj", qd, &p.q_bias),
                ("k_proj", kvd, &p.k_bias),
                ("v_proj", kvd, &p.v_bias),
            ] {
                if let Some(r) = r {
                    push(format!("{pre}.self_attn.{name}.bias"), vec![dim], r);
                }
            }
            push(
                format!("{pre}.self_attn.o_proj.weight"),
                vec![c, qd],
                &p.o_proj,
            );
            push(
                format!("{pre}.post_attention_layernorm.weight"),
                vec![c],
                &p.post_attention_layernorm,
            );
            push(
                format!("{pre}.mlp.gate_proj.weight"),
                vec![i, c],
                &p.gate_proj,
            );
            push(format!("{pre}.mlp.up_proj.weight"), vec![i, c], &p.up_proj);
            push(
                format!("{pre}.mlp.down_proj.weight"),
                vec![c, i],
                &p.down_proj,
            );
        }
        push("model.norm.weight".into(), vec![c], &self.norm);
        match (&self.score, cfg.head) {
            (Some(score), Head::SequenceClassification { num_labels }) => {
                push("score.weight".into(), vec![num_labels, c], score)
            }
            _ if !cfg.tie_word_embeddings => {
                push("lm_head.weight".into(), vec![v, c], &self.lm_head)
            }
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tensors_tile_the_buffer_exactly_once() {
        for (arch, tied) in [
            ("LlamaForCausalLM", false),
            ("Qwen2ForCausalLM", true),
            ("Qwen2ForSequenceClassification", true),
            ("LlamaForSequenceClassification", false),
        ] {
            let cfg = ModelConfig::from_json(&json!({"architectures": [arch],
                "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "vocab_size": 10, "tie_word_embeddings": tied, "num_labels": 1}))
            .unwrap();
            let layout = ParamLayout::new(&cfg);
            let mut covered = vec![0u8; layout.len];
            for t in layout.tensors(&cfg) {
                assert_eq!(
                    t.range.len(),
                    t.shape.iter().product::<usize>(),
                    "{}",
                    t.name
                );
                for x in &mut covered[t.range] {
                    *x += 1;
                }
            }
            assert!(covered.iter().all(|&x| x == 1), "{arch}");
            let names: Vec<String> = layout.tensors(&cfg).into_iter().map(|t| t.name).collect();
            let classifier = arch.ends_with("Classification");
            assert_eq!(names.contains(&"score.weight".to_string()), classifier);
            assert_eq!(
                names.contains(&"lm_head.weight".to_string()),
                !classifier && !tied
            );
            for l in &layout.layers {
                assert_eq!(
                    l.qkv_proj().len(),
                    l.q_proj.len() + l.k_proj.len() + l.v_proj.len()
                );
                assert_eq!(l.qkv_proj().start, l.q_proj.start);
                assert_eq!(l.gate_up_proj().len(), l.gate_proj.len() + l.up_proj.len());
                if let Some(b) = l.qkv_bias() {
                    assert_eq!(b.len(), 8 + 4 + 4);
                }
            }
        }
    }
}
