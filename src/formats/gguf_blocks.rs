//! A GGUF file's Q4_1 and Q8_0 tensors kept as they lie, for inference on the CPU: copied from the
//! file into GGML's block layout (`kernels::cpu::blockq`), the query and key rows un-permuted and
//! the projections that run together joined, with no f32 copy made. Each tensor's pages of the
//! map are let go once copied, so the file is never held twice.

use super::gguf::GgufFile;
use super::gguf_header::tensor_bytes;
use super::gguf_names::{gguf_name, Layout};
use super::hf::blocks_from_hf;
use crate::error::{Error, Result};
use crate::kernels::cpu::blockq::{BlockWeight, Format};
use crate::model::config::ModelConfig;
use crate::ops::linear::BlockWeights;
use candle_core::quantized::GgmlDType;

impl GgufFile {
    /// The weights (internal names) the file stores as Q4_1 or Q8_0 blocks, as blocks.
    pub fn block_weights(&self, cfg: &ModelConfig) -> Result<BlockWeights> {
        blocks_from_hf(cfg, |hf_name, shape| {
            let (name, layout) = gguf_name(hf_name, cfg).ok_or_else(|| {
                Error::bad_file(&self.path, format!("no GGUF tensor for '{hf_name}'"))
            })?;
            let Some(q) = self.blocks(&name)? else {
                return Ok(None);
            };
            let (rows, cols) = q.dims();
            if [rows, cols] != shape {
                return Err(Error::Mismatch(format!(
                    "{}: tensor '{name}' has shape [{rows}, {cols}] but the metadata implies {shape:?}",
                    self.path.display()
                )));
            }
            Ok(Some(match layout {
                Layout::RopePermuted(heads) => unpermute_rope_rows(&q, heads),
                // A transposed one is asked for in the (out, in) shape the file has.
                Layout::Same | Layout::Transposed => q,
            }))
        })
    }

    /// Tensor `name` as blocks where the file stores it as a Q4_1 or Q8_0 matrix; None otherwise.
    fn blocks(&self, name: &str) -> Result<Option<BlockWeight>> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| {
            Error::bad_file(
                &self.path,
                format!("tensor '{name}': missing from the file"),
            )
        })?;
        let format = match info.ggml_dtype {
            GgmlDType::Q4_1 => Format::Q4,
            GgmlDType::Q8_0 => Format::Q8,
            _ => return Ok(None),
        };
        let &[rows, cols] = info.shape.dims() else {
            return Ok(None);
        };
        // The header check keeps every tensor's bytes inside the file.
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        let len = tensor_bytes(info.ggml_dtype, info.shape.elem_count() as u64) as usize;
        let q = BlockWeight::from_ggml(format, &self.bytes[start..start + len], rows, cols)
            .map_err(|e| Error::bad_file(&self.path, format!("tensor '{name}': {e}")))?;
        // SAFETY: the map is private and read-only, so dropping its pages only means that the
        // next read of them comes from the file again.
        unsafe {
            let _ =
                self.bytes
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len);
        }
        Ok(Some(q))
    }
}

/// `gguf_names::from_gguf_layout` of query and key rows, on blocks: within each head of
/// (heads * D) rows, row (pair p, half s) of llama.cpp's interleaved order becomes row (s, p) of
/// the two halves.
fn unpermute_rope_rows(q: &BlockWeight, heads: usize) -> BlockWeight {
    let d = q.dims().0 / heads;
    let order: Vec<usize> = (0..heads * d)
        .map(|r| {
            let (h, s, p) = (r / d, (r % d) / (d / 2), r % (d / 2));
            h * d + 2 * p + s
        })
        .collect();
    q.permute_rows(&order)
}
