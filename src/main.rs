use std::process::ExitCode;

fn main() -> ExitCode {
    match tpo_engine::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
