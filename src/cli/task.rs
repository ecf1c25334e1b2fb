//! `tpo-engine task-data` (hidden): writes the built-in task's files, for
//! `scripts/make-seed.sh` and for checking the task by hand.

use crate::io::write_atomic;
use crate::tpo::task::{make_prompts, seed_sft_data, working_sft_data};
use anyhow::Result;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum What {
    /// {"prompt", "answer"} lines: instructions for generation and judging.
    Prompts,
    /// {"prompt", "completion", "style"} lines: the seed's fine-tuning data.
    Sft,
    /// Like sft, but only thought-prompt examples with the working (the seed's first stage).
    Working,
    /// Plain text, one example a line: prompt and completion of the fine-tuning data, for
    /// training the tokenizer (`init-model --corpus`).
    Corpus,
}

#[derive(clap::Args)]
pub struct TaskDataArgs {
    #[arg(long, value_enum)]
    what: What,
    #[arg(long)]
    count: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// File to write.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: TaskDataArgs) -> Result<()> {
    let rows = match args.what {
        What::Prompts => make_prompts(args.count, args.seed),
        What::Sft | What::Corpus => seed_sft_data(args.count, args.seed)?,
        What::Working => working_sft_data(args.count, args.seed)?,
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
