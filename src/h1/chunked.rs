//! The chunked transfer coding (RFC 9112 section 7.1): a strict, incremental decoder that never
//! copies the data it finds, and the encoder. Pure.
//!
//! The decoder reads whatever part of a body has arrived and says which bytes were framing and
//! which were data (ranges into the caller's buffer: the caller forwards them itself), and
//! exactly where the body ends, so the bytes after it (a pipelined request, the next response)
//! are never taken. It refuses every framing two parsers could read differently: a size that
//! is not 1 to 16 hex digits, any line end but CRLF, chunk extensions outside their grammar,
//! and a trailer section that is too long, not made of valid field lines, or carries a field
//! that must never be a trailer ([`refused_trailer`]). Bounds: [`MAX_LINE`] per size line,
//! [`MAX_EXTENSIONS`] of extensions per body, [`MAX_TRAILERS`] for the trailer section.
//!
//! The encoder writes chunk heads, the closing CRLF and the last chunk into a caller-owned
//! buffer, without formatting machinery.

use std::ops::Range;

/// Longest chunk-size line, size and extensions and CR included (the LF is not counted).
pub const MAX_LINE: usize = 4096;

/// Most bytes of chunk extensions in one body, all lines together (hyper's bound too): stops a
/// peer from sending mostly framing.
pub const MAX_EXTENSIONS: usize = 16 * 1024;

/// Longest trailer section, its field lines and the final blank line included. The caller's
/// buffer must be able to hold it whole: the decoder hands the section over in one range.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// A chunked body that cannot be read safely: the message is broken off and neither connection
/// is reused. The reason is for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk(pub &'static str);

/// What one call to [`Decoder::decode`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Step {
    /// Bytes of the input taken: data, framing, or both. The rest must be presented again,
    /// first, on the next call (with more bytes after it once they arrive).
    pub consumed: usize,
    /// Chunk data found, as a range of the input (within `..consumed`): the caller forwards
    /// exactly these bytes. At most one range per call.
    pub data: Option<Range<usize>>,
    /// The body ended: `consumed` is its last byte plus one, and what follows in the input is
    /// not the body's.
    pub done: bool,
    /// When `done` and the body had trailer fields: their lines as received (each a valid
    /// field line ending in CRLF, the final blank line not included), a range of the input.
    pub trailers: Option<Range<usize>>,
}

/// Where the decoder is within the chunked grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (none yet when a line starts).
    Size,
    /// Whitespace after the size: only `;` may follow (BWS before an extension).
    SizeWs,
    /// After `;`: optional whitespace, then an extension name.
    ExtName0,
    ExtName,
    /// Whitespace after a name: `=` or `;` may follow.
    ExtNameWs,
    /// After `=`: optional whitespace, then a token or a quoted string.
    ExtVal0,
    ExtToken,
    ExtQuoted,
    ExtQuotedPair,
    /// Right after a quoted string's closing quote.
    ExtQuotedEnd,
    /// Whitespace after a value: only `;` may follow.
    ExtValWs,
    /// The CR of a size line was read: only LF may follow.
    SizeLf,
    /// Inside a chunk's data.
    Data,
    /// After a chunk's data: CR, then LF.
    DataCr,
    DataLf,
    /// After the last chunk's line: the trailer section, read whole.
    Trailers,
    /// The body ended.
    Done,
    /// Refused: every later call is refused too.
    Failed(&'static str),
}

/// The incremental decoder of one chunked body. Feed it the bytes after the head (or after
/// what it consumed before) until [`Step::done`].
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    /// The size being read, then the data left in the chunk.
    size: u64,
    /// Hex digits read on this size line.
    digits: u8,
    /// Bytes of this size line so far.
    line: usize,
    /// Bytes of extensions so far in the body.
    extensions: usize,
    /// Bytes of the trailer section already validated (whole lines, from its first byte):
    /// the section is presented again from its start until it is complete.
    scanned: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder at the start of a body.
    pub fn new() -> Decoder {
        Decoder {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            extensions: 0,
            scanned: 0,
        }
    }

    /// The body ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads as much of `input` as it can: up to and including the first data found (and the
    /// framing after it, up to the next data), or to the end of the body, or to the end of the
    /// input. A partial trailer section is not consumed: present it again with more bytes.
    /// `consumed == 0` without `done` means nothing more can be read without more input.
    /// Never panics, whatever the input.
    pub fn decode(&mut self, input: &[u8]) -> Result<Step, BadChunk> {
        let mut pos = 0;
        let mut data = None;
        loop {
            match self.state {
                State::Data => {
                    let avail = input.len() - pos;
                    if data.is_some() || avail == 0 {
                        break;
                    }
                    let n = usize::try_from(self.size).map_or(avail, |left| left.min(avail));
                    data = Some(pos..pos + n);
                    pos += n;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::Trailers => return self.trailers(input, pos, data),
                State::Done => {
                    return Ok(Step {
                        consumed: pos,
                        data,
                        done: true,
                        trailers: None,
                    });
                }
                State::Failed(why) => return Err(BadChunk(why)),
                _ => {}
            }
            let Some(&b) = input.get(pos) else { break };
            pos += 1;
            if let Err(why) = self.byte(b) {
                self.state = State::Failed(why);
                return Err(BadChunk(why));
            }
        }
        Ok(Step {
            consumed: pos,
            data,
            done: false,
            trailers: None,
        })
    }

    /// One byte of framing (a size line, or the CRLF after data).
    fn byte(&mut self, b: u8) -> Result<(), &'static str> {
        use State::*;
        if !matches!(self.state, SizeLf | DataCr | DataLf) {
            self.line += 1;
            if self.line > MAX_LINE {
                return Err("chunk size line too long");
            }
        }
        let ws = b == b' ' || b == b'\t';
        self.state = match (self.state, b) {
            (Size, b'\r' | b';' | b' ' | b'\t') if self.digits == 0 => {
                return Err("chunk size without digits");
            }
            (Size, b'\r') => SizeLf,
            (Size, b';') => ExtName0,
            (Size, _) if ws => SizeWs,
            (Size, _) => {
                let Some(d) = hex(b) else {
                    return Err(if b == b'\n' {
                        "a bare LF in a chunk size line"
                    } else {
                        "invalid chunk size"
                    });
                };
                if self.digits == 16 {
                    return Err("chunk size over 16 hex digits");
                }
                self.digits += 1;
                self.size = self.size << 4 | u64::from(d);
                Size
            }
            (SizeWs, _) if ws => SizeWs,
            (SizeWs, b';') => ExtName0,
            (ExtName0, _) if ws => ExtName0,
            (ExtName0, _) if tchar(b) => ExtName,
            (ExtName, _) if tchar(b) => ExtName,
            (ExtName, _) if ws => ExtNameWs,
            (ExtName | ExtNameWs, b'=') => ExtVal0,
            (ExtName | ExtNameWs, b';') => ExtName0,
            (ExtName, b'\r') => SizeLf,
            (ExtNameWs, _) if ws => ExtNameWs,
            (ExtVal0, _) if ws => ExtVal0,
            (ExtVal0, b'"') => ExtQuoted,
            (ExtVal0, _) if tchar(b) => ExtToken,
            (ExtToken, _) if tchar(b) => ExtToken,
            (ExtToken | ExtQuotedEnd, _) if ws => ExtValWs,
            (ExtToken | ExtQuotedEnd | ExtValWs, b';') => ExtName0,
            (ExtToken | ExtQuotedEnd, b'\r') => SizeLf,
            (ExtQuoted, b'"') => ExtQuotedEnd,
            (ExtQuoted, b'\\') => ExtQuotedPair,
            (ExtQuoted, _) if qdtext(b) => ExtQuoted,
            (ExtQuotedPair, _) if ws || vchar_or_obs(b) => ExtQuoted,
            (ExtValWs, _) if ws => ExtValWs,
            (SizeLf, b'\n') => {
                // Everything on the line after the digits and before the CR was extensions.
                self.extensions += self.line - usize::from(self.digits) - 1;
                if self.extensions > MAX_EXTENSIONS {
                    return Err("chunk extensions over limit");
                }
                self.line = 0;
                self.digits = 0;
                if self.size == 0 {
                    self.scanned = 0;
                    Trailers
                } else {
                    Data
                }
            }
            (SizeLf, _) => return Err("a bare CR in a chunk size line"),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size,
            (DataCr | DataLf, _) => return Err("chunk data not followed by CRLF"),
            (_, b'\n') => return Err("a bare LF in a chunk size line"),
            _ => return Err("invalid chunk extension"),
        };
        Ok(())
    }

    /// The trailer section, starting at `input[start..]`: taken only whole, up to its blank
    /// line. Lines already validated on an earlier call (`scanned`) are not read again.
    fn trailers(
        &mut self,
        input: &[u8],
        start: usize,
        data: Option<Range<usize>>,
    ) -> Result<Step, BadChunk> {
        let section = input.get(start..).unwrap_or_default();
        let mut at = self.scanned;
        loop {
            let rest = section.get(at..).unwrap_or_default();
            let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
                if section.len() > MAX_TRAILERS {
                    return Err(self.fail("trailer section too long"));
                }
                self.scanned = at;
                return Ok(Step {
                    consumed: start,
                    data,
                    done: false,
                    trailers: None,
                });
            };
            let end = at + lf + 1;
            if end > MAX_TRAILERS {
                return Err(self.fail("trailer section too long"));
            }
            let Some(line) = rest[..lf].strip_suffix(b"\r") else {
                return Err(self.fail("a bare LF in the trailer section"));
            };
            if line.is_empty() {
                self.state = State::Done;
                return Ok(Step {
                    consumed: start + end,
                    data,
                    done: true,
                    trailers: (at > 0).then(|| start..start + at),
                });
            }
            let Some(name) = field_line(line) else {
                return Err(self.fail("invalid trailer field line"));
            };
            if refused_trailer(name) {
                return Err(self.fail("a trailer field that must not be one"));
            }
            at = end;
        }
    }

    fn fail(&mut self, why: &'static str) -> BadChunk {
        self.state = State::Failed(why);
        BadChunk(why)
    }
}

/// The name of a valid field line (`token ":" OWS field-value OWS`, RFC 9110 section 5): a
/// name of token characters right before the colon (no whitespace: a line starting with it
/// would be an obsolete fold), a value of visible characters, spaces, tabs and obs-text (no CR,
/// LF, NUL or other control). `None` when the line is not one.
fn field_line(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    let valid = !name.is_empty()
        && name.iter().all(|&b| tchar(b))
        && value
            .iter()
            .all(|&b| b == b' ' || b == b'\t' || vchar_or_obs(b));
    valid.then_some(name)
}

/// Fields that must never arrive as trailers, refused rather than dropped. A sender may only
/// put a field in trailers when its definition allows it (RFC 9110 section 6.5.1), and none of
/// these allows it: framing (Content-Length, Transfer-Encoding, Trailer, TE), routing (Host),
/// hop-by-hop fields, request modifiers and authentication (Expect, Max-Forwards,
/// Authorization, Cache-Control), the payload's description (Content-*), and what the proxy
/// owns in the head (Cookie, Set-Cookie, X-Forwarded-*, Forwarded, Via: a recipient that
/// merges trailers into the header section would otherwise read a client's own
/// X-Forwarded-For, or a second Content-Length or Host). This is hyper's list of fields it
/// never sends as trailers, and more.
///
/// Refused, not dropped: a peer that sends one is broken or probing for a recipient that merges
/// trailers, so breaking off its message costs a correct peer nothing; and refusing keeps the
/// section forwardable as received, in one range, where dropping would mean rewriting it.
pub fn refused_trailer(name: &[u8]) -> bool {
    const REFUSED: [&[u8]; 23] = [
        b"content-length",
        b"transfer-encoding",
        b"trailer",
        b"te",
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"upgrade",
        b"expect",
        b"max-forwards",
        b"authorization",
        b"cache-control",
        b"content-encoding",
        b"content-range",
        b"content-type",
        b"cookie",
        b"set-cookie",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
        b"via",
    ];
    REFUSED.iter().any(|r| r.eq_ignore_ascii_case(name))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A token character (RFC 9110 section 5.6.2).
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A quoted string's plain character (RFC 9110 section 5.6.4): not `"` or `\`.
fn qdtext(b: u8) -> bool {
    b == b'\t' || b == b' ' || (vchar_or_obs(b) && b != b'"' && b != b'\\')
}

/// A visible character or obs-text.
fn vchar_or_obs(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// Appends the head of a chunk of `n` bytes: `n` in lowercase hex, CRLF. `n` must not be 0:
/// a zero-size chunk is the last one ([`last_chunk`]).
pub fn chunk_head(out: &mut Vec<u8>, n: u64) {
    debug_assert!(n > 0, "a data chunk is never empty");
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Appends the CRLF that closes a chunk's data.
pub fn chunk_end(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk: `0`, CRLF, the trailer field lines (each ending in CRLF, as the
/// decoder hands them over; empty for none), and the blank line that ends the body.
pub fn last_chunk(out: &mut Vec<u8>, trailers: &[u8]) {
    out.extend_from_slice(b"0\r\n");
    out.extend_from_slice(trailers);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
