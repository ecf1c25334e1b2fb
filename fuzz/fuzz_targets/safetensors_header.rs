//! The safetensors header parser on arbitrary bytes (as the start of a file of that many
//! bytes), and config.json validation on the same bytes as JSON: errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tpo_engine::model::config::ModelConfig;
use tpo_engine::model::weights::parse_header;

fuzz_target!(|data: &[u8]| {
    let _ = parse_header(std::io::Cursor::new(data), data.len() as u64);
    // A declared length that the bytes do not reach.
    let _ = parse_header(std::io::Cursor::new(data), u64::MAX);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(cfg) = ModelConfig::from_json(&value) {
            let _ = cfg.parameter_count();
        }
    }
});
