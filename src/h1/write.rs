//! The heads stickyd sends: the upstream request head and the client response head, each
//! written from the received head's bytes into one buffer. Pure.

// TEMPORARY STUBS (replaced by the codec branch).
use super::{Body, Field, RequestHead, ResponseHead};
pub struct Forward<'a> {
    pub peer: &'a [u8],
    pub trusted: bool,
    pub proto: &'static str,
    pub via: Option<&'a [u8]>,
    pub cookie: Option<&'a [u8]>,
    pub token_header: Option<&'a [u8]>,
    pub close: bool,
}
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    Default,
    Close,
    KeepAlive,
    Upgrade,
}
pub struct Reply<'a> {
    pub body: Body,
    pub connection: Connection,
    pub set_cookie: Option<&'a [u8]>,
    pub token_header: Option<(&'a [u8], &'a [u8])>,
    pub cache_private: bool,
}
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
pub fn request_head(_o: &mut Vec<u8>, _b: &[u8], _h: &RequestHead, _f: &[Field], _w: &Forward<'_>) {
    todo!()
}
pub fn response_head(_o: &mut Vec<u8>, _b: &[u8], _h: &ResponseHead, _f: &[Field], _r: &Reply<'_>) {
    todo!()
}
pub fn error_response(_o: &mut Vec<u8>, _s: u16, _b: &str, _r: Option<u64>, _c: bool) {
    todo!()
}
