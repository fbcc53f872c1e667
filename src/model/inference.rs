//! The Transformer's inference entry points: quantized copies of its weights, the prompt into a
//! fresh KV cache, the last position's logits, and one step of many sequences at once
//! (continuous batching).

use super::kv_cache::{KvCache, LayerKv};
use super::transformer::Transformer;
use crate::error::Result;
use crate::ops::embedding;
use candle_core::quantized::GgmlDType;
use candle_core::Tensor;

impl Transformer {
    /// Inference with quantized weights: every linear layer of the blocks gets a `dtype` copy of its
    /// weight that decoding steps use (see `ops::linear`); the f32 weights stay for prompts and
    /// training. `Q4_1` runs on chatforge's own 4-bit blocks with f32 activations
    /// (`kernels::cpu::blockq`; candle's Q4_1 kernel is scalar), the other formats on candle's
    /// quantized matmul. The output projection keeps the file's precision
    /// ([`OutputHead::quantize`]). CPU only; layers that carry a LoRA adapter or whose width is not
    /// a multiple of the block size stay f32.
    pub fn quantize(&mut self, dtype: GgmlDType) -> Result<()> {
        self.lm_head.quantize()?;
        for b in &mut self.blocks {
            for l in b.linears_mut() {
                l.quantize(dtype)?;
            }
        }
        Ok(())
    }

    /// Logits for the last position only, (B, V): what generation needs, without the (B, T, V) tensor.
    pub fn forward_last(
        &self,
        idx: &Tensor,
        start: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.forward_hidden(idx, start, cache)?;
        let t = h.dim(1)?;
        let last = h.narrow(1, t - 1, 1)?;
        Ok(self.logits(&last)?.squeeze(1)?)
    }

    /// The logits of hidden states h (1, T, C) row by row, `f(position, row)`, computed a few
    /// positions at a time so that the (T, V) logits are never all held (scoring a continuation).
    pub fn for_each_logits_row(&self, h: &Tensor, mut f: impl FnMut(usize, &[f32])) -> Result<()> {
        const ROWS: usize = 8;
        let t = h.dim(1)?;
        for start in (0..t).step_by(ROWS) {
            let n = ROWS.min(t - start);
            let logits: Vec<f32> = self
                .logits(&h.narrow(1, start, n)?)?
                .flatten_all()?
                .to_vec1()?;
            let v = logits.len() / n;
            for (i, row) in logits.chunks_exact(v).enumerate() {
                f(start + i, row);
            }
        }
        Ok(())
    }

    /// Runs a prompt (1, T) through the model into a fresh KV cache: the cache and the next-token
    /// logits (1, V), where every decoding loop starts.
    pub fn prefill(&self, prompt: &[u32]) -> Result<(KvCache, Tensor)> {
        let cfg = &self.cfg;
        let mut cache = KvCache::new(cfg.n_layer, 1, cfg.n_kv_head, cfg.head_dim, self.device())?;
        let x = Tensor::from_slice(prompt, (1, prompt.len()), self.device())?;
        let logits = self.forward_last(&x, 0, Some(&mut cache))?;
        Ok((cache, logits))
    }

    /// Next-token logits for B independent sequences that each add one token at the end of their
    /// own cache (continuous batching in a server). tokens: B ids -> (B, V).
    pub fn forward_step_batch(&self, tokens: &[u32], caches: &mut [KvCache]) -> Result<Tensor> {
        let positions: Vec<usize> = caches.iter().map(|c| c.len()).collect();
        if let Some(&p) = positions.iter().find(|&&p| p >= self.cfg.context) {
            return Err(crate::error::Error::Mismatch(format!(
                "position {p} is past the model's context of {}",
                self.cfg.context
            )));
        }
        let mut x = embedding::embed_ragged(&self.wte, self.wpe.as_ref(), tokens, &positions)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let mut layer: Vec<&mut LayerKv> = caches.iter_mut().map(|c| c.layer_mut(i)).collect();
            x = block.forward_ragged(&x, self.rope.as_ref(), &positions, &mut layer)?;
        }
        for c in caches.iter_mut() {
            c.advance(1);
        }
        let h = self.ln_f.forward(&x)?;
        Ok(self.logits(&h)?.squeeze(1)?)
    }
}
