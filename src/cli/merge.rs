//! `tpo-engine merge`: a LoRA adapter folded into its base model, written as a full
//! Hugging Face checkpoint (W += s B A in f32, stored in the base's dtype).

use crate::io::outputs::Inputs;
use crate::model::{peft, Model};
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The base model (a directory, or a Hub id org/name[@revision]).
    #[arg(long)]
    model: PathBuf,
    /// The adapter directory (adapter_config.json and adapter_model.safetensors, PEFT's
    /// or ours).
    #[arg(long)]
    adapter: PathBuf,
    /// The merged checkpoint's directory (must not exist).
    #[arg(long)]
    out: PathBuf,
}

pub fn run_merge(args: MergeArgs) -> Result<()> {
    let model_dir = crate::io::hub::resolve_flag("--model", &args.model)?;
    Inputs::default()
        .dir("--model", &model_dir)
        .dir("--adapter", &args.adapter)
        .check_output("--out", &args.out)?;
    if args.out.exists() {
        bail!(
            "--out {}: already exists; choose a new directory",
            args.out.display()
        );
    }
    let mut model = Model::load(&model_dir)?;
    let adapter = peft::load(&args.adapter, &model.config)?;
    adapter.merge_into(&model.layout, &mut model.params)?;
    crate::checkpoint::save_checkpoint(&args.out, &model_dir, &model)?;
    eprintln!(
        "wrote {}: {} merged into {} ({} Linears, r {}, scale {})",
        args.out.display(),
        args.adapter.display(),
        model_dir.display(),
        adapter.layout.linears.len(),
        adapter.config.r,
        adapter.config.scale()
    );
    Ok(())
}
