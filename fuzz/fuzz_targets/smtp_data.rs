//! The DATA decoder under arbitrary input and arbitrary read boundaries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailkeep_smtp::data::{check_bdat, DataDecoder};

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (data, cuts) = input;
    let whole = {
        let mut d = DataDecoder::new(4096, 1000, 2048);
        let (n, done) = d.feed(&data);
        assert!(n <= data.len());
        (n, done, d.finish())
    };
    // Feeding the same bytes in pieces must give the same result: read boundaries never
    // change where a message ends (the smuggling defence depends on it).
    let mut d = DataDecoder::new(4096, 1000, 2048);
    let mut pos = 0;
    let mut done = false;
    for c in cuts.iter().chain(std::iter::repeat(&255)) {
        if pos >= data.len() || done {
            break;
        }
        let end = (pos + 1 + *c as usize).min(data.len());
        let (n, fin) = d.feed(&data[pos..end]);
        pos += n;
        done = fin;
        if !fin {
            assert_eq!(n, end - (pos - n));
        }
    }
    assert_eq!((pos, done), (whole.0, whole.1));
    let pieces = d.finish();
    assert_eq!(pieces, whole.2);
    if let (true, Ok(msg)) = (done, &pieces) {
        // Whatever was accepted has only CRLF line endings.
        for (i, b) in msg.iter().enumerate() {
            if *b == b'\n' {
                assert!(i > 0 && msg[i - 1] == b'\r');
            }
            if *b == b'\r' {
                assert_eq!(msg.get(i + 1), Some(&b'\n'));
            }
        }
    }
    let _ = check_bdat(data, 1000, 2048);
});
