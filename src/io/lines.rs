//! Reading a JSONL input line by line with every line bounded, so that memory follows the
//! work and not the file: a line longer than any input the model could take (or a file
//! with no line end at all, such as /dev/zero) is an error at `file:line` once the bound is
//! passed, before the line is read whole, parsed or tokenized.

use anyhow::{Context, Result};
use std::io::{BufRead, BufReader};
use std::path::Path;

/// The longest JSONL line an input may have when each text in it must fit a context of
/// `context` tokens of at most `token_bytes` bytes each: a line holds at most 3 such texts
/// (a pair's prompt, chosen and rejected), JSON escapes a byte in at most 6 (`\u0001`), and
/// 1 MiB is left for the line's other fields.
pub fn line_limit(context: usize, token_bytes: usize) -> usize {
    context
        .saturating_mul(token_bytes.max(1))
        .saturating_mul(3 * 6)
        .saturating_add(1 << 20)
}

/// Hands each non-blank line of `path` to `each` with its 1-based number. A line over
/// `max_bytes`, a line that is not UTF-8, and an error of `each` are errors naming
/// `file:line`. A UTF-8 byte-order mark at the start of the file is skipped; a `\r` before
/// a line end is dropped.
pub fn for_each_line(
    path: &Path,
    what: &str,
    max_bytes: usize,
    mut each: impl FnMut(usize, &str) -> Result<()>,
) -> Result<()> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read {what} file {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let ended = read_bounded(&mut reader, &mut line, max_bytes).map_err(|e| match e {
            Bounded::TooLong => anyhow::anyhow!(
                "{}:{number}: a line longer than {max_bytes} bytes, more than the model could ever take; \
                 is this the right file?",
                path.display()
            ),
            Bounded::Io(e) => {
                anyhow::anyhow!("{}:{number}: cannot read {what} file: {e}", path.display())
            }
        })?;
        if !ended && line.is_empty() {
            return Ok(());
        }
        let mut bytes = line.as_slice();
        if number == 1 {
            bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
        }
        bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let text = std::str::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}:{number}: not valid UTF-8 (at byte {} of the line)",
                path.display(),
                e.valid_up_to() + 1
            )
        })?;
        if !text.trim().is_empty() {
            each(number, text).with_context(|| format!("{}:{number}", path.display()))?;
        }
        if !ended {
            return Ok(());
        }
    }
    unreachable!("the line numbers run out only after usize::MAX lines")
}

enum Bounded {
    TooLong,
    Io(std::io::Error),
}

/// Appends the next line's bytes (without its `\n`) to `line`; returns whether a `\n` ended
/// it (false at the end of the file). Stops with `TooLong` once the line passes `max_bytes`,
/// having read at most one buffer beyond it.
fn read_bounded(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    max_bytes: usize,
) -> std::result::Result<bool, Bounded> {
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Bounded::Io(e)),
        };
        if chunk.is_empty() {
            return Ok(false);
        }
        let (take, ended) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        line.extend_from_slice(&chunk[..take]);
        reader.consume(take + usize::from(ended));
        if line.len() > max_bytes {
            return Err(Bounded::TooLong);
        }
        if ended {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[u8], max: usize) -> Result<Vec<(usize, String)>> {
        let tmp = tempfile::TempDir::new().unwrap();
        let path = tmp.path().join("in.jsonl");
        std::fs::write(&path, text).unwrap();
        let mut got = vec![];
        for_each_line(&path, "test", max, |n, l| {
            got.push((n, l.to_string()));
            Ok(())
        })?;
        Ok(got)
    }

    #[test]
    fn lines_are_numbered_with_blanks_a_bom_and_crlf_handled() {
        let got = lines("\u{feff}{\"a\": 1}\r\n\n  \n{\"b\": 2}".as_bytes(), 100).unwrap();
        assert_eq!(got, [(1, "{\"a\": 1}".into()), (4, "{\"b\": 2}".into())]);
        assert_eq!(lines(b"", 100).unwrap(), []);
        assert_eq!(lines(b"x\n", 100).unwrap(), [(1, "x".into())]);
    }

    #[test]
    fn a_long_line_or_bad_utf8_is_an_error_at_its_line() {
        let long = format!("ok\n{}\n", "y".repeat(500));
        let err = format!("{:#}", lines(long.as_bytes(), 100).unwrap_err());
        assert!(
            err.contains("in.jsonl:2: a line longer than 100 bytes"),
            "{err}"
        );
        let err = format!("{:#}", lines(b"ok\nok\n\xff\xfe\n", 100).unwrap_err());
        assert!(
            err.contains("in.jsonl:3: not valid UTF-8 (at byte 1"),
            "{err}"
        );
        // A line exactly at the bound is fine.
        assert_eq!(lines(&[b'z'; 100], 100).unwrap()[0].1.len(), 100);
    }

    #[test]
    fn an_endless_line_stops_at_the_bound() {
        let mut zeros = std::io::BufReader::with_capacity(1 << 16, std::io::repeat(0));
        let mut line = vec![];
        assert!(matches!(
            read_bounded(&mut zeros, &mut line, 1 << 20),
            Err(Bounded::TooLong)
        ));
        assert!(line.len() <= (1 << 20) + (1 << 16));
    }

    #[test]
    fn the_limit_covers_three_escaped_texts() {
        assert_eq!(line_limit(1024, 16), 1024 * 16 * 18 + (1 << 20));
        assert_eq!(line_limit(usize::MAX, 16), usize::MAX);
    }
}
