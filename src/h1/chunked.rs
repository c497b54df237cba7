//! The chunked transfer coding (RFC 9112 section 7.1): a strict, incremental decoder that never
//! copies the data it finds, and the encoder. Pure.

// TEMPORARY STUBS (replaced by the codec branch).
use std::ops::Range;
#[derive(Debug)]
pub struct BadChunk;
#[derive(Debug, Default)]
pub struct Step {
    pub consumed: usize,
    pub data: Option<Range<usize>>,
    pub done: bool,
    pub trailers: Option<Range<usize>>,
}
#[derive(Debug, Default)]
pub struct Decoder;
impl Decoder {
    pub fn new() -> Decoder {
        Decoder
    }
    pub fn decode(&mut self, _input: &[u8]) -> Result<Step, BadChunk> {
        todo!()
    }
}
pub fn encode_chunk(_out: &mut Vec<u8>, _data: &[u8]) {
    todo!()
}
pub fn encode_last(_out: &mut Vec<u8>, _trailers: &[u8]) {
    todo!()
}
