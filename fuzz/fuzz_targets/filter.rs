//! The trace/capture filter parser (text from the API): it must never panic or
//! overflow the stack, whatever the nesting, and a filter that parses must evaluate
//! any frame. Input: the filter text, a NUL byte, then the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucanal::io::filter::Filter;

fuzz_target!(|data: &[u8]| {
    let (text, frame) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(text);
    if let Ok(f) = Filter::parse(&text) {
        let first = f.matches(frame);
        assert_eq!(first, f.matches(frame), "a filter is a pure function of the frame");
        assert_eq!(Filter::parse(f.text()).as_ref(), Ok(&f), "its own text parses to the same filter");
    }
});
