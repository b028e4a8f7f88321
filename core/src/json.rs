//! Checks on JSON text a client sent, made before anything parses it.

/// Whether `text` nests arrays and objects deeper than `max` levels.
///
/// A linear scan with no recursion and no allocation: JSON parsers and the
/// code that walks or drops a parsed value recurse once per level, and guest
/// processes run on small stacks, so depth is refused before any of them
/// sees the text. Brackets inside strings do not count; the scan does not
/// validate the text (the parser that runs after it does).
pub fn depth_exceeds(text: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_arrays_and_objects_but_not_strings() {
        assert!(!depth_exceeds(b"1", 0));
        assert!(depth_exceeds(b"[1]", 0));
        assert!(!depth_exceeds(br#"{"a":[{"b":1}]}"#, 3));
        assert!(depth_exceeds(br#"{"a":[{"b":1}]}"#, 2));
        assert!(!depth_exceeds(br#"{"a":"[[[[{{{{"}"#, 1));
        assert!(!depth_exceeds(br#"{"a":"\"[[[["}"#, 1));
        assert!(!depth_exceeds(br#"[[],[],[]]"#, 2));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(depth_exceeds(deep.as_bytes(), 32));
        assert!(!depth_exceeds(deep.as_bytes(), 10_000));
    }
}
