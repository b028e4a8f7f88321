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
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        i += 1;
        match b {
            // A string is skipped to its closing quote a word at a time
            // (`memchr`), not byte by byte: chat payloads are mostly text.
            b'"' => match string_end(text, i) {
                Some(end) => i = end,
                None => return false,
            },
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

/// Where the string whose content starts at `from` ends (just past its
/// closing quote); `None` when it does not end.
fn string_end(text: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let at = from + memchr::memchr2(b'"', b'\\', text.get(from..)?)?;
        if text[at] == b'"' {
            return Some(at + 1);
        }
        // An escape: the next byte, whatever it is, is part of the string.
        from = at + 2;
    }
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
        assert!(!depth_exceeds(br#"["\\"]"#, 1), "an escaped backslash ends");
        assert!(depth_exceeds(br#"["\\",[[]]]"#, 2));
        assert!(!depth_exceeds(br#"[[["unterminated"#, 3));
        assert!(!depth_exceeds(br#""\"#, 0), "an escape at the very end");
    }

    /// The byte-at-a-time scan this one replaced, as the reference.
    fn reference(text: &[u8], max: usize) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
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

    proptest::proptest! {
        #[test]
        fn agrees_with_the_byte_scan(
            text in proptest::collection::vec(
                proptest::sample::select(b"[]{}\"\\a,:1 ".to_vec()), 0..64),
            max in 0usize..6,
        ) {
            proptest::prop_assert_eq!(depth_exceeds(&text, max), reference(&text, max));
        }
    }
}
