use super::*;
use proptest::prelude::*;

/// What a body decoded to.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    data: Vec<u8>,
    trailers: Option<Vec<u8>>,
    /// Bytes of the wire taken, when the body ended.
    len: usize,
}

/// Feeds `wire` to a decoder in pieces cut at `cuts`, the way a connection does: a buffer
/// that keeps what was not consumed and gets the next piece appended. `Ok(None)`: the body
/// did not end within the wire.
fn drive(wire: &[u8], cuts: &[usize]) -> Result<Option<Decoded>, BadChunk> {
    let mut dec = Decoder::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut taken = 0;
    let mut data = Vec::new();
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(wire.len())).collect();
    bounds.push(wire.len());
    bounds.sort_unstable();
    let mut from = 0;
    for to in bounds {
        pending.extend_from_slice(&wire[from..to]);
        from = to;
        loop {
            let step = dec.decode(&pending)?;
            assert!(step.consumed <= pending.len());
            if let Some(r) = &step.data {
                assert!(r.end <= step.consumed, "data within what was consumed");
                data.extend_from_slice(&pending[r.clone()]);
            }
            if step.done {
                assert!(dec.is_done());
                return Ok(Some(Decoded {
                    data,
                    trailers: step.trailers.map(|r| pending[r].to_vec()),
                    len: taken + step.consumed,
                }));
            }
            assert!(step.trailers.is_none());
            pending.drain(..step.consumed);
            taken += step.consumed;
            if step.consumed == 0 {
                break;
            }
        }
    }
    Ok(None)
}

fn whole(wire: &[u8]) -> Result<Option<Decoded>, BadChunk> {
    drive(wire, &[])
}

fn byte_by_byte(wire: &[u8]) -> Result<Option<Decoded>, BadChunk> {
    drive(wire, &(0..wire.len()).collect::<Vec<_>>())
}

#[test]
fn a_body_decodes_to_its_data_and_ends_exactly_at_its_last_byte() {
    let wire = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    let body_len = wire.len() - b"GET / HTTP/1.1\r\n".len();
    for got in [whole(wire), byte_by_byte(wire)] {
        let got = got.unwrap().unwrap();
        assert_eq!(got.data, b"hello, world");
        assert_eq!(got.trailers, None);
        assert_eq!(got.len, body_len);
    }
}

#[test]
fn data_is_handed_over_as_ranges_of_the_input_never_copied() {
    let mut dec = Decoder::new();
    let wire = b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n";
    let s = dec.decode(wire).unwrap();
    assert_eq!(s.data, Some(3..8));
    assert_eq!(
        s.consumed, 13,
        "the framing up to the next data is taken with it"
    );
    assert!(!s.done);
    let s = dec.decode(&wire[13..]).unwrap();
    assert_eq!(s.data, Some(0..3));
    assert!(s.done && s.consumed == wire.len() - 13);
    assert_eq!(
        dec.decode(b"more").unwrap(),
        Step {
            consumed: 0,
            data: None,
            done: true,
            trailers: None
        },
        "nothing is taken after the end"
    );
}

#[test]
fn a_chunk_split_across_reads_is_handed_over_in_parts() {
    let mut dec = Decoder::new();
    let s = dec.decode(b"a\r\n0123").unwrap();
    assert_eq!((s.consumed, s.data), (7, Some(3..7)));
    let s = dec.decode(b"456789\r").unwrap();
    assert_eq!((s.consumed, s.data), (7, Some(0..6)));
    let s = dec.decode(b"\n0\r\n\r\n").unwrap();
    assert!(s.done && s.data.is_none() && s.consumed == 6);
}

#[test]
fn trailers_are_handed_over_whole_and_validated() {
    let wire = b"3\r\nabc\r\n0\r\nX-Checksum: 42\r\nGrpc-Status: 0\r\n\r\nnext";
    for got in [whole(wire), byte_by_byte(wire)] {
        let got = got.unwrap().unwrap();
        assert_eq!(got.data, b"abc");
        assert_eq!(
            got.trailers.as_deref(),
            Some(&b"X-Checksum: 42\r\nGrpc-Status: 0\r\n"[..])
        );
        assert_eq!(got.len, wire.len() - 4);
    }
}

#[test]
fn a_partial_trailer_section_is_left_in_the_buffer_until_it_is_whole() {
    let mut dec = Decoder::new();
    let s = dec.decode(b"0\r\nX-A: 1\r\nX-B").unwrap();
    assert_eq!(
        (s.consumed, s.done),
        (3, false),
        "only the last chunk's line"
    );
    let s = dec.decode(b"X-A: 1\r\nX-B").unwrap();
    assert_eq!((s.consumed, s.done), (0, false));
    let s = dec.decode(b"X-A: 1\r\nX-B: 2\r\n\r\n").unwrap();
    assert!(s.done);
    assert_eq!(s.trailers, Some(0..16));
    assert_eq!(s.consumed, 18);
}

#[test]
fn extensions_in_their_grammar_are_accepted_and_ignored() {
    for line in [
        "5;a",
        "5;a=b",
        "5;a=b;c",
        "5 ;a",
        "5\t; a = b ; c",
        "5;a=\"quoted; \\\"x\\\" \\\\\"",
        "5;a=\"\"",
        "5;n=\"\u{e9}\"",
        "5;!#$%&'*+-.^_`|~=x",
        "5;a=\"q\" ;b",
    ] {
        let wire = format!("{line}\r\nhello\r\n0\r\n\r\n");
        let got = whole(wire.as_bytes());
        assert_eq!(
            got.map(|d| d.unwrap().data),
            Ok(b"hello".to_vec()),
            "{line:?}"
        );
        assert_eq!(
            byte_by_byte(wire.as_bytes()).map(|d| d.unwrap().len),
            Ok(wire.len())
        );
    }
}

#[test]
fn sizes_of_1_to_16_hex_digits_in_either_case_are_read() {
    let got = whole(b"0000000000000003\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n");
    assert_eq!(got.unwrap().unwrap().data, b"abc0123456789");
    let mut dec = Decoder::new();
    let s = dec.decode(b"ffffffffffffffff\r\nxy").unwrap();
    assert_eq!(s.data, Some(18..20), "the largest size is a size");
    let mut dec = Decoder::new();
    let s = dec.decode(b"0000000000000000\r\n\r\n").unwrap();
    assert!(s.done, "zero in 16 digits is the last chunk");
}

#[test]
fn every_framing_two_parsers_could_read_differently_is_refused() {
    let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(MAX_LINE));
    let many_ext = format!(
        "{}0\r\n\r\n",
        format!("1;{}\r\nx\r\n", "e".repeat(1000)).repeat(20)
    );
    let long_trailer = format!("0\r\nX-A: {}\r\n\r\n", "v".repeat(MAX_TRAILERS));
    let cases: [(&str, &[u8]); 38] = [
        ("empty size line", b"\r\nhello\r\n0\r\n\r\n"),
        ("no digits before an extension", b";a\r\nhello\r\n0\r\n\r\n"),
        ("leading whitespace", b" 5\r\nhello\r\n0\r\n\r\n"),
        ("non-hex size", b"zz\r\nabcd\r\n0\r\n\r\n"),
        ("signed size", b"+5\r\nhello\r\n0\r\n\r\n"),
        ("negative size", b"-5\r\nhello\r\n0\r\n\r\n"),
        ("0x prefix", b"0x5\r\nhello\r\n0\r\n\r\n"),
        ("17 digits", b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
        ("over u64", b"10000000000000000\r\n"),
        ("bare LF after size", b"5\nhello\r\n0\r\n\r\n"),
        ("bare CR after size", b"5\rhello\r\n0\r\n\r\n"),
        ("whitespace before CRLF", b"5 \r\nhello\r\n0\r\n\r\n"),
        ("empty extension", b"5;\r\nhello\r\n0\r\n\r\n"),
        ("extension without a name", b"5;=b\r\nhello\r\n0\r\n\r\n"),
        ("extension without a value", b"5;a=\r\nhello\r\n0\r\n\r\n"),
        ("space in a name", b"5;a b\r\nhello\r\n0\r\n\r\n"),
        ("whitespace after a value", b"5;a=b \r\nhello\r\n0\r\n\r\n"),
        ("unterminated quote", b"5;a=\"b\r\nhello\r\n0\r\n\r\n"),
        ("text after a quote", b"5;a=\"b\"c\r\nhello\r\n0\r\n\r\n"),
        ("control in a quote", b"5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n"),
        ("bare LF in an extension", b"5;a=b\nhello\r\n0\r\n\r\n"),
        ("bare CR in an extension", b"5;a=b\rhello\r\n0\r\n\r\n"),
        ("separator in a token", b"5;a=b,c\r\nhello\r\n0\r\n\r\n"),
        ("data longer than its size", b"5\r\nhelloX\r\n0\r\n\r\n"),
        ("bare LF after data", b"5\r\nhello\n0\r\n\r\n"),
        ("bare CR after data", b"5\r\nhello\r0\r\n\r\n"),
        ("no line end after data", b"5\r\nhello0\r\n\r\n"),
        ("extension line too long", long_ext.as_bytes()),
        ("extensions over the body's bound", many_ext.as_bytes()),
        ("bare LF ending the body", b"0\r\n\n"),
        ("bare LF ending a trailer", b"0\r\nX-A: 1\n\r\n"),
        ("obsolete line folding", b"0\r\nX-A: 1\r\n 2\r\n\r\n"),
        ("trailer without a colon", b"0\r\nX-A 1\r\n\r\n"),
        ("whitespace before a colon", b"0\r\nX-A : 1\r\n\r\n"),
        ("control in a trailer", b"0\r\nX-A: \x00\r\n\r\n"),
        ("bare CR in a trailer", b"0\r\nX-A: 1\r2\r\n\r\n"),
        ("a framing trailer", b"0\r\nContent-Length: 5\r\n\r\n"),
        ("trailer section too long", long_trailer.as_bytes()),
    ];
    for (what, wire) in cases {
        assert!(whole(wire).is_err(), "{what}: read whole");
        assert!(byte_by_byte(wire).is_err(), "{what}: read byte by byte");
    }
}

#[test]
fn an_unending_trailer_line_is_refused_past_the_bound_without_waiting_for_its_end() {
    let mut dec = Decoder::new();
    assert_eq!(dec.decode(b"0\r\n").unwrap().consumed, 3);
    let partial = vec![b'x'; MAX_TRAILERS];
    assert_eq!(dec.decode(&partial).unwrap().consumed, 0);
    let over = vec![b'x'; MAX_TRAILERS + 1];
    assert!(dec.decode(&over).is_err());
}

#[test]
fn fields_that_must_not_be_trailers_are_refused_whatever_their_case() {
    for name in [
        "Content-Length",
        "transfer-encoding",
        "HOST",
        "Trailer",
        "TE",
        "Connection",
        "Cookie",
        "Set-Cookie",
        "X-Forwarded-For",
        "Via",
        "Authorization",
        "Content-Type",
    ] {
        let wire = format!("0\r\n{name}: x\r\n\r\n");
        assert!(whole(wire.as_bytes()).is_err(), "{name}");
    }
    assert!(
        whole(b"0\r\nX-Content-Length: 5\r\n\r\n").is_ok(),
        "only exact names"
    );
}

#[test]
fn a_refused_body_stays_refused() {
    let mut dec = Decoder::new();
    let first = dec.decode(b"5\nhello").unwrap_err();
    assert_eq!(dec.decode(b"0\r\n\r\n"), Err(first));
}

#[test]
fn the_encoder_writes_lowercase_hex_heads_and_the_last_chunk() {
    let mut out = Vec::new();
    chunk_head(&mut out, 0x1a2b);
    out.extend_from_slice(b"data");
    chunk_end(&mut out);
    chunk_head(&mut out, 1);
    chunk_head(&mut out, u64::MAX);
    last_chunk(&mut out, b"");
    last_chunk(&mut out, b"X-A: 1\r\n");
    assert_eq!(
        out,
        b"1a2b\r\ndata\r\n1\r\nffffffffffffffff\r\n0\r\n\r\n0\r\nX-A: 1\r\n\r\n"
    );
}

/// A body written by the encoder from `chunks` and `trailers`.
fn encode(chunks: &[Vec<u8>], trailers: &[(String, String)]) -> (Vec<u8>, Vec<u8>) {
    let mut wire = Vec::new();
    for c in chunks {
        chunk_head(&mut wire, c.len() as u64);
        wire.extend_from_slice(c);
        chunk_end(&mut wire);
    }
    let mut t = Vec::new();
    for (n, v) in trailers {
        t.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    last_chunk(&mut wire, &t);
    (wire, t)
}

fn chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..8)
}

fn trailers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        ("[A-Za-z][A-Za-z0-9-]{0,12}", "[ -~]{0,20}")
            .prop_filter("allowed as trailers", |(n, _)| {
                !refused_trailer(n.as_bytes())
            })
            .prop_map(|(n, v)| (n, v.trim().to_owned())),
        0..4,
    )
}

proptest! {
    #[test]
    fn what_the_encoder_writes_decodes_to_the_same_data_and_trailers_on_any_split(
        chunks in chunks(),
        trailers in trailers(),
        cuts in prop::collection::vec(0..2000usize, 0..12),
    ) {
        let (wire, t) = encode(&chunks, &trailers);
        let got = drive(&wire, &cuts).unwrap().unwrap();
        prop_assert_eq!(got.data, chunks.concat());
        prop_assert_eq!(got.trailers, (!t.is_empty()).then_some(t));
        prop_assert_eq!(got.len, wire.len());
    }

    #[test]
    fn byte_by_byte_reads_the_same_as_whole(chunks in chunks(), trailers in trailers()) {
        let (wire, _) = encode(&chunks, &trailers);
        prop_assert_eq!(byte_by_byte(&wire).unwrap(), whole(&wire).unwrap());
    }

    #[test]
    fn the_decoder_never_takes_a_byte_of_the_next_message(
        chunks in chunks(),
        trailers in trailers(),
        next in prop::collection::vec(any::<u8>(), 0..200),
        cuts in prop::collection::vec(0..2000usize, 0..12),
    ) {
        let (mut wire, _) = encode(&chunks, &trailers);
        let body = wire.len();
        wire.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
        wire.extend_from_slice(&next);
        let got = drive(&wire, &cuts).unwrap().unwrap();
        prop_assert_eq!(got.len, body);
        prop_assert_eq!(got.data, chunks.concat());
    }

    #[test]
    fn the_decoder_never_panics_and_splits_never_change_the_verdict(
        wire in prop::collection::vec(any::<u8>(), 0..400),
        cuts in prop::collection::vec(0..400usize, 0..8),
    ) {
        let a = whole(&wire);
        let b = drive(&wire, &cuts);
        // A refusal may come earlier or later on a split, never a different reading.
        match (a, b) {
            (Ok(Some(a)), Ok(Some(b))) => prop_assert_eq!(a, b),
            (Ok(Some(_)), other) | (other, Ok(Some(_))) => prop_assert!(false, "{:?}", other),
            _ => {}
        }
    }

    #[test]
    fn framing_like_bytes_never_panic(
        wire in prop::collection::vec(
            prop::sample::select(b"0123456789abcdefABCDEF;= \t\"\\\r\nxX-:".to_vec()),
            0..300,
        ),
        cuts in prop::collection::vec(0..300usize, 0..8),
    ) {
        let a = whole(&wire);
        let b = drive(&wire, &cuts);
        if let (Ok(Some(a)), Ok(Some(b))) = (&a, &b) {
            prop_assert_eq!(a, b);
        }
        prop_assert_eq!(a.is_err(), b.is_err());
    }

    #[test]
    fn an_accepted_trailer_line_is_one_httparse_reads_the_same(line in prop::collection::vec(any::<u8>(), 0..40)) {
        if let Some(name) = field_line(&line) {
            let mut block = line.clone();
            block.extend_from_slice(b"\r\n\r\n");
            let mut h = [httparse::EMPTY_HEADER; 2];
            let parsed = httparse::parse_headers(&block, &mut h);
            prop_assert!(matches!(parsed, Ok(httparse::Status::Complete(_))), "{:?}", parsed);
            prop_assert_eq!(h[0].name.as_bytes(), name);
        }
    }
}
