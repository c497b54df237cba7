//! Replays the fuzz corpora on the stable toolchain: every file of `fuzz/corpus/<target>/` (the
//! committed seeds) and of `fuzz/regressions/<target>/` (inputs that once crashed a target)
//! goes through the same checks as the cargo-fuzz target, from `fuzz/src/lib.rs`. Known seeds
//! are also checked for their expected result, so this asserts real behaviour even while no
//! regression exists. Run the fuzzers themselves with `scripts/fuzz.sh`.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod checks;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use stickyd::headers::Found;
use stickyd::token::Invalid;

/// `(file name, bytes)` of every file in `fuzz/<kind>/<target>/`, sorted; none if it is absent.
fn files(kind: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "fuzz", kind, target]
        .iter()
        .collect();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.expect("read fuzz dir").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read fuzz input"))
        })
        .collect();
    out.sort();
    out
}

/// Runs `check` over the seeds and regressions of `target`, returning the seeds' results by
/// file name. The output of a failing test names the input.
fn replay<T>(target: &str, check: impl Fn(&[u8]) -> T) -> Vec<(String, T)> {
    let seeds = files("corpus", target);
    assert!(!seeds.is_empty(), "no seeds in fuzz/corpus/{target}");
    let mut out = Vec::new();
    for (kind, list) in [
        ("corpus", seeds),
        ("regressions", files("regressions", target)),
    ] {
        for (name, data) in list {
            // Shown with the panic message when this input fails its check.
            eprintln!("replaying fuzz/{kind}/{target}/{name}");
            let v = check(&data);
            if kind == "corpus" {
                out.push((name, v));
            }
        }
    }
    out
}

fn seed<'a, T>(results: &'a [(String, T)], name: &str) -> &'a T {
    &results
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("seed {name} is missing"))
        .1
}

#[test]
fn token_seeds_and_regressions() {
    let r = replay("token", checks::token);
    assert_eq!(seed(&r, "valid-key0").map(|v| v.key_index), Ok(0));
    assert_eq!(seed(&r, "valid-key1").map(|v| v.key_index), Ok(1));
    let v = seed(&r, "valid-key0").unwrap();
    assert_eq!(v.claims.nonce, 0x0102_0304_0506_0708);
    assert_eq!(v.claims.issued_at, 1_700_000_000);
    assert_eq!(*seed(&r, "bad-mac"), Err(Invalid::BadMac));
    assert!(matches!(
        seed(&r, "unknown-key"),
        Err(Invalid::UnknownKey | Invalid::BadMac)
    ));
    assert_eq!(*seed(&r, "short"), Err(Invalid::Malformed));
    assert_eq!(*seed(&r, "padded"), Err(Invalid::Malformed));
}

#[test]
fn cookie_seeds_and_regressions() {
    let r = replay("cookie", checks::cookie);
    let token =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/token/valid-key0"))
            .unwrap();
    assert_eq!(seed(&r, "typical").bytes(), token);
    assert_eq!(seed(&r, "two-headers").bytes(), token);
    assert_eq!(seed(&r, "quoted").bytes(), token);
    assert_eq!(seed(&r, "duplicate").bytes(), b"first");
    assert_eq!(seed(&r, "whitespace").bytes(), b"v1");
    assert_eq!(
        *seed(&r, "bare-and-empty"),
        Found::Value([0; stickyd::headers::MAX_COOKIE_VALUE], 0)
    );
    assert_eq!(*seed(&r, "absent"), Found::Absent);
    assert_eq!(*seed(&r, "too-long"), Found::TooLong);
}

#[test]
fn xff_seeds_and_regressions() {
    let r = replay("xff", checks::xff);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(*seed(&r, "loopback-one-hop"), ip("203.0.113.9"));
    assert_eq!(*seed(&r, "chain"), ip("198.51.100.1"));
    assert_eq!(*seed(&r, "spoofed-left"), ip("203.0.113.9"));
    assert_eq!(*seed(&r, "untrusted-peer"), ip("203.0.113.7"));
    assert_eq!(*seed(&r, "v6"), ip("2001:db8::5"));
    assert_eq!(*seed(&r, "mapped"), ip("203.0.113.9"));
    assert_eq!(*seed(&r, "garbage"), ip("10.0.0.1"));
    assert_eq!(*seed(&r, "two-headers"), ip("198.51.100.1"));
    assert_eq!(*seed(&r, "empty"), ip("127.0.0.1"));
}

#[test]
fn config_seeds_and_regressions() {
    let r = replay("config", checks::config);
    for name in ["example.toml", "bench.toml"] {
        match seed(&r, name) {
            Some(Ok(cfg)) => assert!(!cfg.backends.is_empty(), "{name}: no backend"),
            other => panic!("{name} does not parse: {other:?}"),
        }
    }
    // The live example too, in case it moved on since it was copied as a seed.
    let example = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml"))
        .expect("config/example.toml");
    assert!(matches!(checks::config(&example), Some(Ok(_))));
}

#[test]
fn h1_request_seeds_and_regressions() {
    use checks::Framing;
    let r = replay("h1_request", checks::h1_request);
    let framing = |name: &str| seed(&r, name).as_ref().map(|h| h.framing);
    assert_eq!(framing("get"), Some(Framing::None));
    assert_eq!(framing("post-length"), Some(Framing::Length(11)));
    assert_eq!(framing("post-chunked"), Some(Framing::Chunked));
    assert_eq!(framing("upgrade"), Some(Framing::None));
    assert_eq!(framing("http10"), Some(Framing::None));
    // CVE-2026-2836: no body delimited by close.
    assert_eq!(framing("http10-no-length"), Some(Framing::None));
    let abs = seed(&r, "absolute").as_ref().unwrap();
    assert_eq!(abs.target, b"http://example.com:8080/a/b?c=d");
    assert_eq!(seed(&r, "asterisk").as_ref().unwrap().target, b"*");
    // Refused by stickyd (CVE-2026-2835 and the other stricter rules).
    for refused in ["cl-and-te", "cl-list", "look-alike", "bare-lf"] {
        assert_eq!(*seed(&r, refused), None, "{refused}");
    }
}
