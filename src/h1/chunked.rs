//! The chunked transfer coding (RFC 9112 section 7.1): a strict, incremental decoder that never
//! copies the data it finds, and the encoder. Pure.
