//! The output projection to the vocabulary, (V, C), with the copies decoding steps read instead:
//! an f16 copy, or 8-bit blocks where those hold the weight exactly (a file's Q8_0 tensor), or
//! only those blocks (a GGUF file loaded for inference).

use super::linear::{decoding_rows, linear, small_matmul_t};
use crate::error::{Error, Result};
use crate::kernels::cpu::blockq::{BlockWeight, Format};
use candle_core::{DType, Tensor};
use std::sync::Arc;

pub struct OutputHead {
    /// The weight as a tensor; None where the model holds only its blocks.
    w: Option<Tensor>,
    /// An f16 copy for decoding steps.
    half: Option<Tensor>,
    /// The weight in 8-bit blocks, multiplied with f32 activations: for decoding steps, and for
    /// every step where there is no tensor.
    q8: Option<Arc<BlockWeight>>,
}

impl OutputHead {
    pub fn new(w: Tensor) -> Self {
        OutputHead {
            w: Some(w),
            half: None,
            q8: None,
        }
    }

    /// A head that holds only 8-bit blocks (inference).
    pub fn from_blocks(q8: Arc<BlockWeight>) -> Self {
        OutputHead {
            w: None,
            half: None,
            q8: Some(q8),
        }
    }

    /// The weight as a tensor (training and scoring use it); an error for a head held only in
    /// blocks.
    pub fn weight(&self) -> Result<&Tensor> {
        self.w.as_ref().ok_or_else(|| {
            Error::Mismatch(
                "this model holds its weights quantized, as its GGUF file does (for generation); \
                 training needs the f32 weights: load it with --weights f32"
                    .into(),
            )
        })
    }

    /// Hidden states (B, T, C) -> f32 logits (B, T, V).
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let Some(w) = &self.w else {
            let q = self
                .q8
                .as_ref()
                .expect("a head holds its weight or its blocks");
            return q.matmul_t(h);
        };
        if let (Some(q), true) = (&self.q8, decoding_rows(h) && !h.track_op()) {
            return q.matmul_t(h);
        }
        if let Some(w) = &self.half {
            let (b, t, c) = h.dims3()?;
            if let Some(y) = small_matmul_t(&h.reshape((b * t, c))?, w)? {
                return Ok(y.reshape((b, t, ()))?);
            }
        }
        Ok(linear(h, w, None)?.to_dtype(DType::F32)?)
    }

    /// Copies for decoding, never quantized further than the file did: the next token is an
    /// argmax over the logits, and 8-bit activations there flip close calls (SmolLM2's first
    /// answer token among them). Where 8-bit blocks hold the weight exactly (a file's Q8_0 tensor)
    /// decoding steps use those with f32 activations; otherwise an f16 copy, half the bytes of
    /// f32. CPU and f32 weights only.
    pub fn quantize(&mut self) -> Result<()> {
        let Some(w) = &self.w else { return Ok(()) };
        if w.device().is_cpu() && w.dtype() == DType::F32 {
            self.q8 = BlockWeight::quantize_exact(w, Format::Q8)?.map(Arc::new);
            if self.q8.is_none() {
                self.half = Some(w.to_dtype(DType::F16)?.contiguous()?);
            }
        }
        Ok(())
    }
}
