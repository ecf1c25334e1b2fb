//! What transformers gives chat templates beyond Jinja, rendered as Python renders it:
//! `tojson` as `json.dumps` (insertion order, `", "` and `": "`, nothing HTML-escaped,
//! `indent=`), `strftime_now` as `datetime.now().strftime`, and `trim` / `str.strip()` with
//! Python's whitespace. `tokenizer.rs` installs them in the template environment.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, State, Value};

/// Python's `str.isspace()`: Rust's White_Space and the four separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `str.strip` / `lstrip` / `rstrip` (`which`: "strip", "lstrip", "rstrip"), with Python's
/// whitespace, or the given characters.
fn strip<'a>(s: &'a str, which: &str, chars: Option<&str>) -> &'a str {
    let is_cut = |c: char| match chars {
        Some(set) => set.contains(c),
        None => is_python_space(c),
    };
    match which {
        "lstrip" => s.trim_start_matches(is_cut),
        "rstrip" => s.trim_end_matches(is_cut),
        _ => s.trim_matches(is_cut),
    }
}

/// Jinja's `trim` filter: `str(value).strip(chars)`.
pub fn trim(value: &Value, chars: Option<String>) -> String {
    let text = value.to_string();
    strip(&text, "strip", chars.as_deref()).to_string()
}

/// Python's string methods that differ from minijinja's, then minijinja-contrib's.
pub fn unknown_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if let (Some(s), "strip" | "lstrip" | "rstrip") = (value.as_str(), method) {
        let chars = match args {
            [] => None,
            [v] if v.is_none() => None,
            [v] => Some(v.as_str().ok_or_else(|| {
                Error::new(ErrorKind::InvalidOperation, "strip arg must be None or str")
            })?),
            _ => return Err(Error::from(ErrorKind::TooManyArguments)),
        };
        return Ok(Value::from(strip(s, method, chars)));
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// `datetime.now().strftime(format)`: local time through the C library's `strftime`, as
/// Python's; `%f` (microseconds) as Python writes it, and `%z` / `%Z` empty (a naive
/// datetime has no zone).
pub fn strftime_now(format: String) -> Result<String, Error> {
    let mut now = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: gettimeofday writes the struct it is given; the zone argument may be null.
    unsafe { libc::gettimeofday(&mut now, std::ptr::null_mut()) };
    // SAFETY: localtime_r fills the tm it is given from a valid time_t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&now.tv_sec, &mut tm) }.is_null() {
        return Err(Error::new(ErrorKind::InvalidOperation, "no local time"));
    }
    // Python's own directives first; the rest go to strftime.
    let mut c_format = String::new();
    let mut chars = format.chars();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            c_format.push(ch);
            continue;
        }
        match chars.next() {
            Some('f') => c_format.push_str(&format!("{:06}", now.tv_usec)),
            Some('z' | 'Z') => {}
            Some(other) => {
                c_format.push('%');
                c_format.push(other);
            }
            None => c_format.push('%'),
        }
    }
    if c_format.is_empty() {
        return Ok(String::new());
    }
    let c_format = std::ffi::CString::new(c_format)
        .map_err(|_| Error::new(ErrorKind::InvalidOperation, "a NUL in the format"))?;
    // strftime returns 0 when the result does not fit (or is empty): grow and try again.
    let mut size = 256 + 8 * format.len();
    loop {
        let mut buf = vec![0u8; size];
        // SAFETY: the buffer holds `size` bytes; strftime writes at most that many and
        // returns how many it wrote.
        let n = unsafe { libc::strftime(buf.as_mut_ptr().cast(), size, c_format.as_ptr(), &tm) };
        if n > 0 || size >= 1 << 20 {
            buf.truncate(n);
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        size *= 4;
    }
}

/// How `json.dumps` lays a value out.
struct Layout {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, which is `json.dumps` with those arguments.
pub fn tojson(value: &Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or("").to_string()),
        Some(v) => {
            let n = v.as_i64().ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    "indent must be an int or a str",
                )
            })?;
            Some(" ".repeat(n.max(0) as usize))
        }
    };
    let separators: Option<Value> = kwargs.get("separators")?;
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] => (a.to_string(), b.to_string()),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "separators must be an (item, key) pair",
                    ))
                }
            }
        }
        // json.dumps: (", ", ": "), or (",", ": ") with an indent.
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let layout = Layout {
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    dump(value, &layout, 0, &mut out)?;
    Ok(out)
}

fn dump(value: &Value, layout: &Layout, level: usize, out: &mut String) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&number(value)?),
        ValueKind::String => quote(value.as_str().unwrap_or(""), layout.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            container(out, layout, level, '[', ']', &items, |item, out| {
                dump(item, layout, level + 1, out)
            })?;
        }
        ValueKind::Map => {
            let mut pairs: Vec<(String, Value)> = value
                .try_iter()?
                .map(|k| Ok((key(&k)?, value.get_item(&k)?)))
                .collect::<Result<_, Error>>()?;
            if layout.sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            container(out, layout, level, '{', '}', &pairs, |(k, v), out| {
                quote(k, layout.ensure_ascii, out);
                out.push_str(&layout.key_sep);
                dump(v, layout, level + 1, out)
            })?;
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("Object of type {kind} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

/// A list or dict body: items separated and, with an indent, one a line.
fn container<T>(
    out: &mut String,
    layout: &Layout,
    level: usize,
    open: char,
    close: char,
    items: &[T],
    mut each: impl FnMut(&T, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, depth: usize| {
        if let Some(indent) = &layout.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(indent);
            }
        }
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&layout.item_sep);
        }
        newline(out, level + 1);
        each(item, out)?;
    }
    newline(out, level);
    out.push(close);
    Ok(())
}

/// A dict key as json.dumps writes it: strings as they are, numbers, booleans and None
/// as their JSON text.
fn key(k: &Value) -> Result<String, Error> {
    Ok(match k.kind() {
        ValueKind::String => k.as_str().unwrap_or("").to_string(),
        ValueKind::Number => number(k)?,
        ValueKind::Bool => (if k.is_true() { "true" } else { "false" }).to_string(),
        ValueKind::None => "null".to_string(),
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("keys must be str, int, float, bool or None, not {kind}"),
            ))
        }
    })
}

/// An int as decimal; a float as Python's `repr` (`json.dumps` writes `float.__repr__`).
fn number(v: &Value) -> Result<String, Error> {
    if v.is_integer() {
        return Ok(v.to_string());
    }
    let x = f64::try_from(v.clone())?;
    Ok(python_float_repr(x))
}

/// `repr(x)` of a Python float: the shortest digits that read back as x, in positional
/// notation for 1e-4 <= |x| < 1e16 and scientific (`1e-05`, `1.5e+16`) otherwise.
/// `json.dumps` writes NaN and the infinities as `NaN`, `Infinity`, `-Infinity`.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "d.ddde-N".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let text = if exp >= 0 {
            let int_len = exp as usize + 1;
            let padded = format!("{digits:0<int_len$}");
            let (int, frac) = padded.split_at(int_len);
            format!("{int}.{}", if frac.is_empty() { "0" } else { frac })
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{text}")
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let e_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{e_sign}{:02}", exp.abs())
    }
}

/// A JSON string as json.dumps writes it: `"` and `\` escaped, the control characters as
/// `\n`, `\r`, `\t`, `\b`, `\f` or `\u00XX`, and with `ensure_ascii` every character
/// outside printable ASCII as `\uXXXX` (surrogate pairs above the BMP).
fn quote(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            // ensure_ascii escapes everything outside ' '..='~' (DEL too).
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_as_python_writes_them() {
        // Python 3: repr() of each.
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1.5e16, "1.5e+16"),
            (1e16, "1e+16"),
            (123456789012345.6, "123456789012345.6"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1e22, "1e+22"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (100.0, "100.0"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(x), want, "{x:e}");
        }
    }

    #[test]
    fn python_whitespace_includes_the_information_separators() {
        assert_eq!(strip("\u{1f}\u{a0} x \u{3000}\u{1c}", "strip", None), "x");
        assert_eq!(
            strip("\u{200b}x\u{200b}", "strip", None),
            "\u{200b}x\u{200b}"
        );
        assert_eq!(strip("xxhixx", "lstrip", Some("x")), "hixx");
        assert_eq!(strip(" hi ", "rstrip", None), " hi");
    }
}
