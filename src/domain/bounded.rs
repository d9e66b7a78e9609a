//! Bounds on text that comes from input (docs/contract.md §6): the one rule that caps every
//! input-derived value the worker writes into a header, an event's ids, an error message or a
//! log field, so that no message, however large its fields, makes a header frame or a log line
//! grow with it.

use std::borrow::Cow;

/// The most bytes of one input-derived value the worker writes anywhere: 1 KiB.
pub const MAX_INPUT_TEXT_BYTES: usize = 1024;

/// The most bytes of input an error message quotes (an id of the wrong shape, a request type):
/// enough to recognise the value, small enough for the message to stay well under
/// [`MAX_INPUT_TEXT_BYTES`].
pub const MAX_QUOTE_BYTES: usize = 128;

/// What ends a value that was cut.
pub const CUT_MARKER: &str = "…";

/// `text` at most [`MAX_INPUT_TEXT_BYTES`] long: as it is when it fits, else cut at a char
/// boundary and ended with [`CUT_MARKER`] (the marker included in the bound).
pub fn capped(text: &str) -> Cow<'_, str> {
    capped_to(text, MAX_INPUT_TEXT_BYTES)
}

/// `text` at most [`MAX_QUOTE_BYTES`] long, cut as [`capped`] cuts: for quoting input in an
/// error message.
pub fn quoted(text: &str) -> Cow<'_, str> {
    capped_to(text, MAX_QUOTE_BYTES)
}

/// `text` at most `max_bytes` long (at least the marker's length): as it is when it fits, else
/// its longest prefix that ends at a char boundary and leaves room for [`CUT_MARKER`], then
/// the marker.
pub fn capped_to(text: &str, max_bytes: usize) -> Cow<'_, str> {
    if text.len() <= max_bytes {
        return Cow::Borrowed(text);
    }
    let mut end = max_bytes.saturating_sub(CUT_MARKER.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{CUT_MARKER}", &text[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_with_a_marker() {
        #[rustfmt::skip]
        let cases: [(&str, String, usize, &str); 6] = [
            ("empty", String::new(), 10, ""),
            ("fits exactly", "a".repeat(10), 10, "aaaaaaaaaa"),
            ("one over", "a".repeat(11), 10, "aaaaaaa…"),
            // "é" is 2 bytes: the cut backs off to a char boundary.
            ("multi-byte", "é".repeat(10), 10, "ééé…"),
            ("4-byte chars", "😀".repeat(5), 10, "😀…"),
            ("marker only", "abcdef".to_owned(), 3, "…"),
        ];
        for (name, text, max, expected) in cases {
            let got = capped_to(&text, max);
            assert_eq!(got, expected, "{name}");
            assert!(got.len() <= max, "{name}: {} bytes", got.len());
        }
    }

    #[test]
    fn the_input_cap_is_one_kib_and_a_quote_is_shorter() {
        let huge = "x".repeat(200 * 1024);
        assert_eq!(capped(&huge).len(), MAX_INPUT_TEXT_BYTES);
        assert!(capped(&huge).ends_with(CUT_MARKER));
        assert_eq!(quoted(&huge).len(), MAX_QUOTE_BYTES);
        assert!(matches!(capped("PR-1"), Cow::Borrowed("PR-1")));
    }
}
