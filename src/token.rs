//! The affinity token: its byte layout, signing and verification.
//!
//! Owns the wire format of the cookie value and the key ring that signs it. It does no I/O and
//! reads no clock: timestamps come in as arguments and lifetimes are judged in [`crate::affinity`].
//!
//! Layout of version 1 (42 bytes, 56 characters of unpadded base64url):
//!
//! ```text
//! 0      1       2             10            18           22           26          42
//! | ver  | keyid | backend_tag | nonce       | issued_at  | last_seen  | mac        |
//! | 0x01 | u8    | 8 bytes     | u64 BE      | u32 BE     | u32 BE     | 16 bytes   |
//! ```
//!
//! Version 2 (58 bytes, 78 characters) adds the tags of the session's backups, for session
//! replication: the backups named to the app when the token was signed, in order (the second
//! all zero when there is none), so a takeover goes to exactly the backends that hold the
//! session's copies. A token without a backup is version 1.
//!
//! ```text
//! 0      1       2         10        18        26      34      38        42        58
//! | ver  | keyid | backend | backup  | backup2 | nonce | issued | last    | mac      |
//! | 0x02 | u8    | 8 bytes | 8 bytes | 8 bytes | u64   | u32    | u32     | 16 bytes |
//! ```
//!
//! * `keyid` is derived from the secret itself (first byte of SHA-256 over a label and the
//!   secret), so it does not depend on the order of the ring or on which instance signs.
//! * `backend_tag` is the first 8 bytes of HMAC(key, "backend:" + id): opaque, and stable when
//!   backends are reordered or re-addressed.
//! * `backup_tag` and `backup2_tag` (version 2) are backend tags as `backend_tag` is.
//! * `mac` is HMAC-SHA256(key, cookie name | "=" | the bytes before it) truncated to 16 bytes,
//!   checked in constant time.
//!
//! The house pattern for a format module (copy it for the next one): the layout drawn above
//! and versioned by its first byte; keys precomputed once per snapshot; no allocation on
//! verify; every failure an `Invalid` reason, never a panic, backed by a property test over
//! arbitrary input and a fuzz target sharing its invariants with the stable tests.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The version of a token without a backup.
pub const VERSION: u8 = 1;
/// The version of a token that names the session's backup (replication).
pub const VERSION_BACKUP: u8 = 2;
/// Length of a decoded version 1 token.
pub const RAW_LEN: usize = 42;
/// Length of an encoded version 1 token (the cookie value).
pub const ENCODED_LEN: usize = 56;
/// Length of a decoded version 2 token.
pub const RAW_LEN_BACKUP: usize = 58;
/// Length of an encoded version 2 token.
pub const ENCODED_LEN_BACKUP: usize = 78;
/// Minimum secret length in bytes.
pub const MIN_SECRET_LEN: usize = 32;
const MAC_LEN: usize = 16;
/// No backup: the `backup_tag` of a version 1 token.
pub const NO_BACKUP: [u8; 8] = [0; 8];

/// What a token asserts once its MAC is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// Opaque tag of the pinned backend under the signing key.
    pub backend_tag: [u8; 8],
    /// Random per-session value; the fallback hash is computed over it.
    pub nonce: u64,
    /// Unix seconds when the session was first issued (bounds `max_life`).
    pub issued_at: u32,
    /// Unix seconds of the last refresh (bounds `max_idle`).
    pub last_seen: u32,
    /// Opaque tag of the session's first backup when the token was signed (replication), or
    /// [`NO_BACKUP`].
    pub backup_tag: [u8; 8],
    /// Its second backup (`backups = 2`), or [`NO_BACKUP`]; none without a first.
    pub backup2_tag: [u8; 8],
}

/// A token whose MAC checked out under the key at `key_index` in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Position in the ring of the key that verified it.
    pub key_index: usize,
    /// The signed claims.
    pub claims: Claims,
}

/// Why a cookie value is not a valid token. Every variant means "treat as no token".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Wrong length, not base64url, or an unknown version.
    Malformed,
    /// No key in the ring has this key id.
    UnknownKey,
    /// A key with this id exists but the MAC does not match.
    BadMac,
}

/// An encoded token, ready to be placed in a `Set-Cookie` value without allocating.
#[derive(Clone, Copy)]
pub struct Encoded([u8; ENCODED_LEN_BACKUP], u8);

impl Encoded {
    /// The cookie value as text.
    pub fn as_str(&self) -> &str {
        // The buffer only ever holds base64url output, which is ASCII.
        std::str::from_utf8(self.0.get(..usize::from(self.1)).unwrap_or_default())
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One signing/verifying key, with its HMAC states precomputed so that a sign or verify clones a
/// keyed state instead of re-deriving the key pads.
#[derive(Clone)]
struct Key {
    id: u8,
    /// Keyed, with the cookie name and "=" already absorbed.
    mac: HmacSha256,
    /// Keyed, with "backend:" already absorbed.
    tag: HmacSha256,
}

/// An ordered ring of secrets: the first signs, all verify.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u8> = self.keys.iter().map(|k| k.id).collect();
        f.debug_struct("KeyRing").field("key_ids", &ids).finish()
    }
}

/// Key id of a secret: independent of ring order, so every instance agrees on it.
pub fn key_id(secret: &[u8]) -> u8 {
    let mut h = Sha256::new();
    h.update(b"stickyd key id\0");
    h.update(secret);
    h.finalize()[0]
}

impl KeyRing {
    /// Builds a ring for tokens carried under `cookie_name`. `secrets` must not be empty; the
    /// first secret signs. Secret length is checked by the config loader, not here.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S], cookie_name: &str) -> KeyRing {
        assert!(!secrets.is_empty(), "a key ring needs at least one key");
        let keys = secrets
            .iter()
            .map(|s| {
                let s = s.as_ref();
                let base = HmacSha256::new_from_slice(s).expect("HMAC accepts keys of any size");
                let mut mac = base.clone();
                mac.update(cookie_name.as_bytes());
                mac.update(b"=");
                let mut tag = base;
                tag.update(b"backend:");
                Key {
                    id: key_id(s),
                    mac,
                    tag,
                }
            })
            .collect();
        KeyRing { keys }
    }

    /// Number of keys in the ring.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a ring holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The opaque tag of backend `id` under the key at `key_index`.
    pub fn backend_tag(&self, key_index: usize, id: &str) -> [u8; 8] {
        let mut m = self.keys[key_index].tag.clone();
        m.update(id.as_bytes());
        let out = m.finalize().into_bytes();
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&out[..8]);
        tag
    }

    /// Signs `claims` with the first key: version 1, or version 2 when it names a backup.
    /// `claims.backend_tag` (and `backup_tag`) must be tags under key 0.
    pub fn sign(&self, claims: &Claims) -> Encoded {
        let key = &self.keys[0];
        let mut raw = [0u8; RAW_LEN_BACKUP];
        raw[1] = key.id;
        raw[2..10].copy_from_slice(&claims.backend_tag);
        let (len, at) = if claims.backup_tag == NO_BACKUP {
            raw[0] = VERSION;
            (RAW_LEN, 10)
        } else {
            raw[0] = VERSION_BACKUP;
            raw[10..18].copy_from_slice(&claims.backup_tag);
            raw[18..26].copy_from_slice(&claims.backup2_tag);
            (RAW_LEN_BACKUP, 26)
        };
        raw[at..at + 8].copy_from_slice(&claims.nonce.to_be_bytes());
        raw[at + 8..at + 12].copy_from_slice(&claims.issued_at.to_be_bytes());
        raw[at + 12..at + 16].copy_from_slice(&claims.last_seen.to_be_bytes());
        let payload = len - MAC_LEN;
        let mut m = key.mac.clone();
        m.update(&raw[..payload]);
        raw[payload..len].copy_from_slice(&m.finalize().into_bytes()[..MAC_LEN]);
        let mut out = [0u8; ENCODED_LEN_BACKUP];
        let n = URL_SAFE_NO_PAD
            .encode_slice(&raw[..len], &mut out)
            .expect("42 or 58 bytes encode to 56 or 78 characters");
        debug_assert!(n == ENCODED_LEN || n == ENCODED_LEN_BACKUP);
        Encoded(out, n as u8)
    }

    /// Decodes and verifies a cookie value. Never panics, whatever the input.
    pub fn verify(&self, value: &[u8]) -> Result<Verified, Invalid> {
        let (version, len) = match value.len() {
            ENCODED_LEN => (VERSION, RAW_LEN),
            ENCODED_LEN_BACKUP => (VERSION_BACKUP, RAW_LEN_BACKUP),
            _ => return Err(Invalid::Malformed),
        };
        let mut raw = [0u8; RAW_LEN_BACKUP + 3];
        match URL_SAFE_NO_PAD.decode_slice(value, &mut raw) {
            Ok(n) if n == len => {}
            _ => return Err(Invalid::Malformed),
        }
        if raw[0] != version {
            return Err(Invalid::Malformed);
        }
        let (backup_tag, backup2_tag, at) = if version == VERSION {
            (NO_BACKUP, NO_BACKUP, 10)
        } else {
            (to8(&raw[10..18]), to8(&raw[18..26]), 26)
        };
        let payload = len - MAC_LEN;
        let id = raw[1];
        let mut known = false;
        // Two secrets may share a one-byte id; try each candidate (a ring holds a handful).
        for (key_index, key) in self.keys.iter().enumerate().filter(|(_, k)| k.id == id) {
            known = true;
            let mut m = key.mac.clone();
            m.update(&raw[..payload]);
            if m.verify_truncated_left(&raw[payload..len]).is_ok() {
                return Ok(Verified {
                    key_index,
                    claims: Claims {
                        backend_tag: to8(&raw[2..10]),
                        nonce: u64::from_be_bytes(to8(&raw[at..at + 8])),
                        issued_at: u32::from_be_bytes(to4(&raw[at + 8..at + 12])),
                        last_seen: u32::from_be_bytes(to4(&raw[at + 12..at + 16])),
                        backup_tag,
                        backup2_tag,
                    },
                });
            }
        }
        Err(if known {
            Invalid::BadMac
        } else {
            Invalid::UnknownKey
        })
    }
}

/// The 8 bytes of `b` (8 long by construction: a slice of a fixed layout).
fn to8(b: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&b[..8]);
    out
}

/// The 4 bytes of `b` (4 long by construction).
fn to4(b: &[u8]) -> [u8; 4] {
    let mut out = [0u8; 4];
    out.copy_from_slice(&b[..4]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: &[u8] = b"0123456789abcdef0123456789abcdef-key-a";
    const B: &[u8] = b"fedcba9876543210fedcba9876543210-key-b";

    fn claims(ring: &KeyRing) -> Claims {
        Claims {
            backend_tag: ring.backend_tag(0, "app-1"),
            nonce: 0x0102_0304_0506_0708,
            issued_at: 1_700_000_000,
            last_seen: 1_700_000_100,
            backup_tag: [0; 8],
            backup2_tag: [0; 8],
        }
    }

    #[test]
    fn a_signed_token_verifies_to_the_same_claims() {
        let ring = KeyRing::new(&[A], "stickyd");
        let c = claims(&ring);
        let t = ring.sign(&c);
        assert_eq!(t.as_str().len(), ENCODED_LEN);
        assert_eq!(
            ring.verify(t.as_str().as_bytes()),
            Ok(Verified {
                key_index: 0,
                claims: c
            })
        );
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let ring = KeyRing::new(&[A], "stickyd");
        let t = ring.sign(&claims(&ring));
        let mut raw = [0u8; RAW_LEN];
        URL_SAFE_NO_PAD
            .decode_slice(t.as_str(), &mut raw)
            .expect("own output decodes");
        for byte in 0..RAW_LEN {
            for bit in 0..8 {
                let mut bad = raw;
                bad[byte] ^= 1 << bit;
                let enc = URL_SAFE_NO_PAD.encode(bad);
                let got = ring.verify(enc.as_bytes());
                let want = match byte {
                    0 => Invalid::Malformed,
                    1 => Invalid::UnknownKey,
                    _ => Invalid::BadMac,
                };
                assert_eq!(got, Err(want), "flip of byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn truncated_and_extended_tokens_are_malformed() {
        let ring = KeyRing::new(&[A], "stickyd");
        let t = ring.sign(&claims(&ring));
        let s = t.as_str().as_bytes();
        for n in 0..s.len() {
            assert_eq!(ring.verify(&s[..n]), Err(Invalid::Malformed), "len {n}");
        }
        let mut long = s.to_vec();
        long.push(b'A');
        assert_eq!(ring.verify(&long), Err(Invalid::Malformed));
        assert_eq!(ring.verify(&[b'x'; 5000]), Err(Invalid::Malformed));
    }

    #[test]
    fn non_base64_characters_are_malformed() {
        let ring = KeyRing::new(&[A], "stickyd");
        let t = ring.sign(&claims(&ring));
        for bad in [b'+', b'/', b'=', b' ', b'"', 0u8, 0xff] {
            let mut s = t.as_str().as_bytes().to_vec();
            s[10] = bad;
            assert_eq!(ring.verify(&s), Err(Invalid::Malformed), "byte {bad:#x}");
        }
    }

    #[test]
    fn an_unknown_version_is_malformed() {
        let ring = KeyRing::new(&[A], "stickyd");
        let t = ring.sign(&claims(&ring));
        let mut raw = [0u8; RAW_LEN];
        URL_SAFE_NO_PAD.decode_slice(t.as_str(), &mut raw).unwrap();
        raw[0] = 2;
        let enc = URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(ring.verify(enc.as_bytes()), Err(Invalid::Malformed));
    }

    #[test]
    fn a_token_from_a_key_not_in_the_ring_is_unknown_key() {
        let a = KeyRing::new(&[A], "stickyd");
        let b = KeyRing::new(&[B], "stickyd");
        assert_ne!(key_id(A), key_id(B), "test keys must have distinct ids");
        let t = a.sign(&claims(&a));
        assert_eq!(b.verify(t.as_str().as_bytes()), Err(Invalid::UnknownKey));
    }

    #[test]
    fn the_mac_covers_the_cookie_name() {
        let a = KeyRing::new(&[A], "stickyd");
        let other = KeyRing::new(&[A], "other");
        let t = a.sign(&claims(&a));
        assert_eq!(other.verify(t.as_str().as_bytes()), Err(Invalid::BadMac));
    }

    #[test]
    fn rotation_old_key_keeps_verifying_and_new_key_signs() {
        let old = KeyRing::new(&[A], "stickyd");
        let rotated = KeyRing::new(&[B, A], "stickyd");
        let old_token = old.sign(&claims(&old));
        let v = rotated.verify(old_token.as_str().as_bytes()).unwrap();
        assert_eq!(v.key_index, 1);
        // Tags are per key: the old token's tag is resolvable under key 1 of the rotated ring.
        assert_eq!(v.claims.backend_tag, rotated.backend_tag(1, "app-1"));
        let new_token = rotated.sign(&claims(&rotated));
        assert_eq!(
            rotated
                .verify(new_token.as_str().as_bytes())
                .unwrap()
                .key_index,
            0
        );
        // Once A is retired, tokens it signed are rejected.
        let retired = KeyRing::new(&[B], "stickyd");
        assert_eq!(
            retired.verify(old_token.as_str().as_bytes()),
            Err(Invalid::UnknownKey)
        );
    }

    #[test]
    fn key_ids_do_not_depend_on_ring_order() {
        let ab = KeyRing::new(&[A, B], "stickyd");
        let ba = KeyRing::new(&[B, A], "stickyd");
        let t = ab.sign(&claims(&ab));
        let v = ba.verify(t.as_str().as_bytes()).unwrap();
        assert_eq!(v.key_index, 1);
    }

    #[test]
    fn backend_tags_are_opaque_and_distinct() {
        let ring = KeyRing::new(&[A, B], "stickyd");
        let t1 = ring.backend_tag(0, "app-1");
        assert_ne!(t1, ring.backend_tag(0, "app-2"));
        assert_ne!(t1, ring.backend_tag(1, "app-1"));
        let enc = ring.sign(&claims(&ring));
        assert!(!enc.as_str().contains("app"));
    }

    #[test]
    fn colliding_key_ids_still_verify_under_the_right_key() {
        // Find two secrets with the same one-byte id.
        let mut seen = std::collections::HashMap::new();
        let (s1, s2) = (0u32..)
            .find_map(|i| {
                let s = format!("collision-search-secret-{i:08}-padding");
                seen.insert(key_id(s.as_bytes()), s.clone())
                    .filter(|prev| *prev != s)
                    .map(|prev| (prev, s))
            })
            .unwrap();
        let ring = KeyRing::new(&[s1.as_bytes(), s2.as_bytes()], "stickyd");
        let signer2 = KeyRing::new(&[s2.as_bytes()], "stickyd");
        let t = signer2.sign(&claims(&signer2));
        assert_eq!(ring.verify(t.as_str().as_bytes()).unwrap().key_index, 1);
    }

    proptest! {
        #[test]
        fn verify_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let ring = KeyRing::new(&[A], "stickyd");
            let _ = ring.verify(&bytes);
        }

        #[test]
        fn verify_never_panics_on_any_base64_of_the_right_length(
            raw in proptest::collection::vec(any::<u8>(), RAW_LEN..=RAW_LEN)
        ) {
            let ring = KeyRing::new(&[A], "stickyd");
            let enc = URL_SAFE_NO_PAD.encode(&raw);
            // A forged MAC passes with probability 2^-128: any random token must be refused.
            prop_assert!(ring.verify(enc.as_bytes()).is_err());
        }

        #[test]
        fn round_trip_holds_for_any_claims(tag in any::<[u8; 8]>(), nonce in any::<u64>(),
                                           issued in any::<u32>(), seen in any::<u32>(),
                                           backup in any::<[u8; 8]>(), with_backup in any::<bool>()) {
            let ring = KeyRing::new(&[A, B], "stickyd");
            let backup_tag = if with_backup { backup } else { NO_BACKUP };
            let backup2_tag = if with_backup { tag } else { NO_BACKUP };
            let c = Claims { backend_tag: tag, nonce, issued_at: issued, last_seen: seen, backup_tag, backup2_tag };
            let t = ring.sign(&c);
            let len = if backup_tag == NO_BACKUP { ENCODED_LEN } else { ENCODED_LEN_BACKUP };
            prop_assert_eq!(t.as_str().len(), len);
            prop_assert_eq!(ring.verify(t.as_str().as_bytes()), Ok(Verified { key_index: 0, claims: c }));
        }
    }
}
