//! Keys and values of the tokens seen so far, per layer, so that decoding a new token costs one
//! position of compute instead of the whole prefix.

use candle_core::{DType, Device, Tensor};

#[derive(Clone)]
pub struct KvCache {
    /// Per layer: keys and values, each (B, K, S, D) after RoPE.
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
}

impl KvCache {
    pub fn new(
        n_layer: usize,
        batch: usize,
        n_kv_head: usize,
        head_dim: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let empty = Tensor::zeros((batch, n_kv_head, 0, head_dim), DType::F32, device)?;
        Ok(KvCache {
            layers: vec![(empty.clone(), empty); n_layer],
            len: 0,
        })
    }

    /// Positions cached so far; the next token goes at this position.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn layer_mut(&mut self, i: usize) -> &mut (Tensor, Tensor) {
        &mut self.layers[i]
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}
