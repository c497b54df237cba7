//! Request and response heads, parsed with `httparse` into [`Field`]s, and every refusal of a
//! request that two HTTP/1 parsers could read differently. Pure: bytes in, a verdict out.

use super::{BadResponse, Field, Method, Refusal, RequestHead, ResponseHead};

/// The bounds a head is parsed within (`[server] max_header_bytes`, `max_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes in a head, request line to the blank line included.
    pub max_head: usize,
    /// Most header lines.
    pub max_headers: usize,
}

/// Parses the request head at the start of `buf`, filling `fields` (cleared first).
/// `Ok(None)`: the head is not complete yet (read more; past `max_head` bytes the caller
/// answers 431).
pub fn request(
    buf: &[u8],
    limits: &Limits,
    fields: &mut Vec<Field>,
) -> Result<Option<RequestHead>, Refusal> {
    let _ = (buf, limits, fields);
    todo!("h1::parse::request")
}

/// Parses a backend's response head at the start of `buf`, filling `fields` (cleared first);
/// `method` is the request's (a response to HEAD has no body). `Ok(None)`: not complete yet.
pub fn response(
    buf: &[u8],
    limits: &Limits,
    method: Method,
    fields: &mut Vec<Field>,
) -> Result<Option<ResponseHead>, BadResponse> {
    let _ = (buf, limits, method, fields);
    todo!("h1::parse::response")
}
