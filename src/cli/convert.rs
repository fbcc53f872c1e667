//! `chatforge convert`: write a model as a Hugging Face model directory, or as a GGUF file that
//! llama.cpp and Ollama run (the output's `.gguf` extension decides).

use anyhow::{bail, Result};
use chatforge::formats::gguf_export::{parse_export_type, save_gguf};
use chatforge::formats::{model_card, ollama, save_model_dir, Library, LoadedModel, ModelCard};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ConvertArgs {
    /// Model to read: an HF directory, a PEFT adapter directory (merged onto its base) or a .gguf file.
    #[arg(long)]
    pub input: PathBuf,
    /// What to write: a FILE.gguf, else a directory (which must be new or empty).
    #[arg(long)]
    pub output: PathBuf,
    /// The GGUF file's matrix type: f32, f16 (the default), bf16, q8_0, q4_0 or q4_1 (norms and
    /// biases stay f32; with 4-bit types the embedding and output head take q8_0).
    #[arg(long = "type", value_parser = parse_export_type)]
    pub dtype: Option<candle_core::quantized::GgmlDType>,
    /// The GGUF file's general.name (default: the input's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Also write an Ollama Modelfile beside the GGUF file (`ollama create NAME -f Modelfile`).
    #[arg(long)]
    pub ollama: bool,
    /// Replace an existing --output (only it, once the new one is complete).
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let gguf = chatforge::formats::gguf::has_gguf_extension(&a.output);
    if !gguf && (a.dtype.is_some() || a.ollama || a.name.is_some()) {
        bail!(
            "--type, --name and --ollama describe a GGUF file; give --output a .gguf name, or \
             drop them to write an HF directory"
        );
    }
    chatforge::fsutil::check_output(&a.output, "--output", &[&a.input], a.force)?;
    let modelfile = a.output.with_file_name("Modelfile");
    if a.ollama {
        chatforge::fsutil::check_output(&modelfile, "--output's Modelfile", &[&a.input], a.force)?;
    }
    // A Hub name resolves (and downloads) once: the model and its card are read from there.
    let input = chatforge::formats::hub::resolve_model(&a.input)?;
    let m = LoadedModel::load(&input, &candle_core::Device::Cpu)?;
    if !gguf {
        let origin = format!("Converted by chatforge from `{}`.", a.input.display());
        let mut card = ModelCard::new(
            &default_name(&a.output),
            &m.cfg,
            Library::Transformers,
            &origin,
        );
        card.license = model_card::card_license(&input);
        save_model_dir(
            &a.output,
            &m.cfg,
            &m.f32_weights()?,
            m.tokenizer.as_ref(),
            &card,
        )?;
        eprintln!("wrote {}", a.output.display());
        return Ok(());
    }
    let Some(tok) = m.tokenizer.as_ref() else {
        bail!(
            "{}: a GGUF file carries its tokenizer, and this model has none (tokenizer.json); \
             add the one it was trained with",
            a.input.display()
        );
    };
    let dtype = a.dtype.unwrap_or(candle_core::quantized::GgmlDType::F16);
    let name = a.name.clone().unwrap_or_else(|| default_name(&a.input));
    let file = a.output.file_name().unwrap_or_default().to_string_lossy();
    let modelfile_text = match a.ollama {
        true => Some(ollama::modelfile(&format!("./{file}"), tok)?),
        false => None,
    };
    let summary = save_gguf(&a.output, &m.cfg, &m.f32_weights()?, tok, dtype, &name)?;
    for t in &summary.fell_back {
        eprintln!("note: {t}'s rows are not whole {dtype:?} blocks; it is stored as f16");
    }
    eprintln!(
        "wrote {} ({} tensors, matrices {dtype:?})",
        a.output.display(),
        summary.tensors
    );
    if let Some(text) = modelfile_text {
        chatforge::fsutil::write_atomic(&modelfile, text.as_bytes())?;
        eprintln!(
            "wrote {} (import it: ollama create {name} -f {})",
            modelfile.display(),
            modelfile.display()
        );
    }
    Ok(())
}

/// The input's file or directory name, without `.gguf`.
fn default_name(input: &Path) -> String {
    let p = chatforge::fsutil::resolve(input).unwrap_or_else(|_| input.to_path_buf());
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}
