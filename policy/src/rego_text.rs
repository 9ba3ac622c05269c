//! The text side of Rego modules, before and after regorus: cheap pre-checks on the source (size,
//! bracket nesting, non-deterministic builtins, all string- and comment-aware) and reading
//! regorus's error text back into a position and a message.

use std::path::Path;

use crate::{Location, PolicyError};

/// Regorus errors read `\n--> file:line:col\n  |\nN | source\n  |   ^\nerror: message`, possibly
/// after context lines; pull out the position and the message.
pub(crate) fn regorus_error(error: &str) -> (Option<(usize, usize)>, String) {
    let lines: Vec<&str> = error.lines().collect();
    let Some(arrow) = lines
        .iter()
        .position(|l| l.trim_start().starts_with("--> "))
    else {
        return (None, first_line(error).trim().to_owned());
    };
    let mut parts = lines[arrow].trim_start()["--> ".len()..].rsplitn(3, ':');
    let column = parts.next().and_then(|c| c.trim().parse::<usize>().ok());
    let line = parts.next().and_then(|l| l.trim().parse::<usize>().ok());
    let position = line.zip(column).map(|(l, c)| (l.max(1), c.max(1)));
    // After the arrow: the gutter lines (`  |`, `5 | code`, `  |   ^`), then `error: message`.
    let message: Vec<&str> = lines[arrow + 1..]
        .iter()
        .skip_while(|l| !l.starts_with("error:") && l.contains('|'))
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error:").unwrap_or(&message).trim();
    let context: Vec<&str> = lines[..arrow]
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    let message = match (context.is_empty(), message.is_empty()) {
        (true, false) => message.to_owned(),
        (false, false) => format!("{}: {message}", context.join(": ")),
        (false, true) => context.join(": "),
        (true, true) => first_line(error).trim().to_owned(),
    };
    (position, message)
}

fn first_line(text: &str) -> &str {
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or(text)
}

/// Modules larger than this are refused before parsing.
const MAX_MODULE_BYTES: usize = 1 << 20;
/// Bracket nesting beyond this is refused before parsing: regorus's parser takes time exponential
/// in the nesting of `{` (depth 18 takes about a second in a release build), which would stall
/// `check` and the reload thread. Real policies stay far below it.
const MAX_NESTING: usize = 12;
/// Builtins whose result depends on the clock, randomness or the network: a decision that used
/// them could not be replayed. Time comes from `input.time`; nothing else may reach out.
const NONDETERMINISTIC: &[&str] = &[
    "time.now_ns",
    "rand.",
    "uuid.rfc4122",
    "http.send",
    "opa.runtime",
    "net.lookup_ip_addr",
];

/// Cheap checks before regorus sees the text: size, bracket nesting and banned builtins, all on
/// the code with strings and comments blanked out.
pub(crate) fn precheck(path: &Path, source: &str) -> Result<(), PolicyError> {
    let fail = |offset: usize, message: String| PolicyError::Rego {
        at: Location::at_offset(path, source, offset),
        message,
    };
    if source.len() > MAX_MODULE_BYTES {
        return Err(fail(
            0,
            format!(
                "the module is too large ({} bytes, at most {MAX_MODULE_BYTES}); split it",
                source.len()
            ),
        ));
    }
    let code = code_only(source);
    let mut depth = 0usize;
    for (offset, b) in code.bytes().enumerate() {
        match b {
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(fail(
                        offset,
                        format!(
                            "brackets nest more than {MAX_NESTING} deep here; flatten the \
                             expression into helper rules"
                        ),
                    ));
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    for name in NONDETERMINISTIC {
        let mut from = 0;
        while let Some(found) = code[from..].find(name) {
            let offset = from + found;
            from = offset + name.len();
            // `rand.` in `operand.x` or `my_rand.` is not the builtin.
            let standalone = code[..offset]
                .bytes()
                .next_back()
                .is_none_or(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'.'));
            if standalone {
                let called = name.trim_end_matches('.');
                return Err(fail(
                    offset,
                    format!(
                        "the module calls {called}; decisions must be replayable, so time comes \
                         from input.time (time.parse_rfc3339_ns(input.time)) and clock, \
                         randomness and network builtins are refused"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `source` with the contents of strings (`"..."` with escapes, raw `` `...` ``) and comments
/// (`#` to the end of the line) replaced by spaces, byte for byte, so offsets stay valid.
fn code_only(source: &str) -> String {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Code,
        Quoted,
        Escaped,
        Raw,
        Comment,
    }
    let mut state = State::Code;
    let mut out = Vec::with_capacity(source.len());
    for &b in source.as_bytes() {
        let (keep, next) = match (state, b) {
            (_, b'\n')
                if state != State::Quoted && state != State::Escaped && state != State::Raw =>
            {
                (true, State::Code)
            }
            (State::Code, b'"') => (true, State::Quoted),
            (State::Code, b'`') => (true, State::Raw),
            (State::Code, b'#') => (false, State::Comment),
            (State::Code, _) => (true, State::Code),
            (State::Quoted, b'\\') => (false, State::Escaped),
            (State::Quoted, b'"') => (true, State::Code),
            (State::Quoted, b'\n') => (true, State::Code), // unterminated: regorus reports it
            (State::Quoted, _) => (false, State::Quoted),
            (State::Escaped, _) => (false, State::Quoted),
            (State::Raw, b'`') => (true, State::Code),
            (State::Raw, b'\n') => (true, State::Raw),
            (State::Raw, _) => (false, State::Raw),
            (State::Comment, _) => (false, State::Comment),
        };
        out.push(if keep { b } else { b' ' });
        state = next;
    }
    // Only ASCII bytes were replaced, and every replaced run starts and ends at an ASCII
    // delimiter, so multi-byte characters are either kept whole or blanked whole.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}
