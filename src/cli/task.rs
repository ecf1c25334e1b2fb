//! `tpo-engine task-data` (hidden): writes the built-in task's files, for
//! `scripts/make-seed.sh` and `scripts/make-direct-seed.sh`, and for checking the task by hand.

use crate::io::write_atomic;
use crate::tpo::task::{
    direct_sft_data, make_prompts, seed_sft_data, working_sft_data, write_seed,
};
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// {"prompt", "answer"} lines: instructions for generation and judging.
    Prompts,
    /// {"prompt", "completion", "style"} lines: the seed's fine-tuning data.
    Sft,
    /// Like sft, but only thought-prompt examples with the working (the seed's first stage).
    Working,
    /// Like sft, but every prompt wrapped in the generic thought prompt and answered
    /// directly, with no marker ("The answer is 7."): fine-tuning data for a seed that never
    /// writes the thought format.
    Direct,
    /// Plain text, one example a line: prompt and completion of the fine-tuning data, for
    /// training the tokenizer (`init-model --corpus`).
    Corpus,
    /// The embedded seed checkpoint, written to the directory --out (which must not exist);
    /// takes no --count or --seed.
    Seed,
}

#[derive(clap::Args)]
pub struct TaskDataArgs {
    #[arg(long, value_enum)]
    what: What,
    /// Rows to write (every kind but seed).
    #[arg(long)]
    count: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// File to write (seed: the checkpoint directory to create).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: TaskDataArgs) -> Result<()> {
    if args.what == What::Seed {
        if args.count.is_some() {
            bail!("--what seed takes no --count");
        }
        write_seed(&args.out)?;
        eprintln!(
            "wrote {} (the embedded seed checkpoint)",
            args.out.display()
        );
        return Ok(());
    }
    let Some(count) = args.count else {
        bail!(
            "--what {} needs --count",
            format!("{:?}", args.what).to_lowercase()
        );
    };
    let rows = match args.what {
        What::Prompts => make_prompts(count, args.seed),
        What::Sft | What::Corpus => seed_sft_data(count, args.seed)?,
        What::Working => working_sft_data(count, args.seed)?,
        What::Direct => direct_sft_data(count, args.seed)?,
        What::Seed => unreachable!("written above"),
    };
    let mut text = String::new();
    for row in &rows {
        match args.what {
            What::Corpus => {
                for key in ["prompt", "completion"] {
                    text.push_str(row[key].as_str().unwrap_or_default());
                    text.push('\n');
                }
            }
            _ => {
                text.push_str(&serde_json::to_string(row)?);
                text.push('\n');
            }
        }
    }
    write_atomic(&args.out, text.as_bytes())?;
    eprintln!("wrote {} ({} rows)", args.out.display(), rows.len());
    Ok(())
}
