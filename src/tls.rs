//! TLS termination with rustls: certificates from PEM files, chosen per handshake by SNI (the
//! first certificate valid for the requested name, the first one when there is no name or no
//! match), ALPN `h2` and `http/1.1`, TLS 1.2 and 1.3 only, the `aws-lc-rs` provider.
//!
//! It also makes the rustls client config for backends that speak TLS ([`Origin`]); the
//! connections themselves are made in `connect`.
//!
//! Certificates are loaded with the config (so `stickyd check` validates them and a reload can
//! refuse bad ones) and the resulting `ServerConfig` lives in the snapshot: a reload swaps the
//! certificates for new handshakes; established connections keep theirs.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// ALPN protocols offered, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A certificate chain and its key, ready to serve.
#[derive(Clone)]
pub struct Cert(pub Arc<CertifiedKey>);

impl std::fmt::Debug for Cert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cert({} certificate(s))", self.0.cert.len())
    }
}

/// Loads a PEM certificate chain and its PEM private key, and checks that they belong
/// together.
pub fn load(cert: &Path, key: &Path) -> Result<Cert, String> {
    with_key(read_chain(cert)?, cert, key)
}

/// Reads the PEM certificate chain in `cert` (leaf first) and checks that its leaf is usable.
/// Its errors are about `cert`, those of [`with_key`] about `key` (the config points at one or
/// the other).
pub(crate) fn read_chain(cert: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in {}: {e}", cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("no certificate in {}", cert.display()));
    };
    webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("{} is not a usable certificate: {e}", cert.display()))?;
    Ok(chain)
}

/// Pairs `chain` (read from `cert`) with the PEM private key in `key`, and checks that they
/// belong together.
pub(crate) fn with_key(
    chain: Vec<CertificateDer<'static>>,
    cert: &Path,
    key: &Path,
) -> Result<Cert, String> {
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&private)
        .map_err(|e| format!("unsupported private key in {}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| {
        format!(
            "{} does not belong to the certificate in {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Cert(Arc::new(certified)))
}

/// Picks the certificate for a handshake.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<Cert>,
}

/// The certificate a handshake with SNI `sni` is served with: the first of `certs` valid for
/// the name, else the first one.
pub fn served(certs: &[Cert], sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
    let by_name = sni
        .and_then(|n| ServerName::try_from(n).ok())
        .and_then(|name| certs.iter().find(|c| valid_for(&c.0, &name)));
    by_name.or_else(|| certs.first()).map(|c| c.0.clone())
}

/// Whether `cert`'s end-entity certificate is valid for `name` (DNS names with wildcards, IP
/// addresses), by webpki's rules.
fn valid_for(cert: &CertifiedKey, name: &ServerName<'_>) -> bool {
    cert.end_entity_cert()
        .ok()
        .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
        .is_some_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        served(&self.certs, hello.server_name())
    }
}

/// The certificate one TLS connection was served with, to check each request's host against
/// (a host it does not cover gets 421 Misdirected Request, so a client cannot reach one site's
/// pool through another site's certificate). The last host checked is remembered: a
/// connection's requests almost always name one host. One per connection, on its own thread.
#[derive(Clone)]
pub struct Covered {
    cert: Arc<CertifiedKey>,
    last: std::cell::RefCell<Option<(Box<[u8]>, bool)>>,
}

impl std::fmt::Debug for Covered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Covered").finish_non_exhaustive()
    }
}

impl Covered {
    /// Requests on a connection served with `cert`.
    pub fn new(cert: Arc<CertifiedKey>) -> Covered {
        Covered {
            cert,
            last: std::cell::RefCell::new(None),
        }
    }

    /// Whether the certificate covers `host`: a request's Host value or authority as received
    /// (port and case as sent). A request without a host names nothing the certificate could
    /// fail to cover. A host that is no DNS name or IP address is not covered.
    pub fn covers(&self, host: Option<&[u8]>) -> bool {
        let Some(raw) = host else {
            return true;
        };
        let mut buf = [0u8; crate::route::MAX_HOST];
        let Some(h) = crate::route::request_host(raw, &mut buf) else {
            return false;
        };
        if let Some((last, ok)) = &*self.last.borrow()
            && **last == *h.as_bytes()
        {
            return *ok;
        }
        // The name as routing reads it: one final dot was taken off, so one still there means
        // a name routing matches no route's host by; brackets hold an IPv6 address only.
        let name = match h.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => Some(v6),
            Some(_) => None,
            None => (!h.ends_with('.')).then_some(h),
        };
        let ok = name
            .and_then(|n| ServerName::try_from(n).ok())
            .is_some_and(|n| valid_for(&self.cert, &n));
        *self.last.borrow_mut() = Some((h.as_bytes().into(), ok));
        ok
    }
}

/// A TLS version a listener accepts (`[tls] versions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// The rustls server config for `certs` (at least one), accepting `versions` (the newest the
/// client offers wins).
pub fn server_config(certs: &[Cert], versions: &[Version]) -> Result<Arc<ServerConfig>, String> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = SERVER_SUITES.to_vec();
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = versions
        .iter()
        .map(|v| match v {
            Version::Tls12 => &rustls::version::TLS12,
            Version::Tls13 => &rustls::version::TLS13,
        })
        .collect();
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            certs: certs.to_vec(),
        }));
    cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // The server's order, not the client's: OpenSSL clients put AES-256-GCM-SHA384 first,
    // whose handshake hashing (SHA-384: no CPU instructions for it) cost more than its
    // key exchange here (docs/performance.md, TLS settings).
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

/// Cipher suites offered to clients, in the server's order of preference: AES-128-GCM with
/// SHA-256 first (the TLS 1.3 mandatory suite, first in Mozilla's intermediate profile; SHA-256
/// and AES run on CPU instructions), then AES-256-GCM, then ChaCha20-Poly1305 (for CPUs
/// without AES instructions); the same order for TLS 1.2. Session tickets and resumption stay
/// rustls's defaults (two TLS 1.3 tickets, a stateful cache): measured in docs/performance.md.
static SERVER_SUITES: [rustls::SupportedCipherSuite; 9] = {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    [
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
};

/// How stickyd reaches a backend over TLS: the roots it trusts and the name it expects.
#[derive(Clone)]
pub struct Origin {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Origin({:?})", self.name)
    }
}

impl Origin {
    /// TLS to a backend named `server_name` (a DNS name or an IP address), verified against the
    /// PEM certificates in `ca` or, without one, the Mozilla root set (webpki-roots). ALPN
    /// offers `h2` for an HTTP/2 backend, `http/1.1` otherwise.
    pub fn new(ca: Option<&Path>, server_name: &str, h2: bool) -> Result<Origin, String> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!("no usable CA certificate in {}", path.display()));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("invalid TLS server name {server_name:?}: {e}"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        Ok(Origin {
            connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            name,
        })
    }

    /// The TLS handshake over `io` (a backend connection, see `connect`).
    pub async fn connect<IO>(&self, io: IO) -> std::io::Result<tokio_rustls::client::TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.connector.connect(self.name.clone(), io).await
    }
}

/// A self-signed certificate for `name` and its key, written to `dir` as `NAME.pem` and
/// `NAME.key`, for the crate's unit tests.
#[cfg(test)]
pub(crate) fn self_signed(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: &[Version] = &[Version::Tls12, Version::Tls13];

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("stickyd-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// An in-memory TLS 1.3 handshake between a rustls client built from `provider` and
    /// stickyd's server config; returns the server side, handshake done.
    fn handshake(tag: &str, provider: rustls::crypto::CryptoProvider) -> rustls::ServerConnection {
        let client = [&rustls::version::TLS13];
        handshake_with(tag, provider, BOTH, &client).expect("handshake completed")
    }

    /// An in-memory handshake between a server accepting `server` versions and a rustls client
    /// offering `client` versions.
    fn handshake_with(
        tag: &str,
        provider: rustls::crypto::CryptoProvider,
        server: &[Version],
        client: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<rustls::ServerConnection, rustls::Error> {
        let d = dir(tag);
        let (c, k) = self_signed(&d, "a.test");
        let server = server_config(&[load(&c, &k).unwrap()], server).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_file_iter(&c).unwrap() {
            roots.add(der.unwrap()).unwrap();
        }
        let _ = std::fs::remove_dir_all(&d);
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(client)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("a.test").unwrap();
        let mut cc = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut sc = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            cc.write_tls(&mut buf).unwrap();
            sc.read_tls(&mut buf.as_slice()).unwrap();
            sc.process_new_packets()?;
            let mut buf = Vec::new();
            sc.write_tls(&mut buf).unwrap();
            cc.read_tls(&mut buf.as_slice()).unwrap();
            cc.process_new_packets()?;
            if !cc.is_handshaking() && !sc.is_handshaking() {
                break;
            }
        }
        assert!(!sc.is_handshaking(), "handshake completed");
        Ok(sc)
    }

    #[test]
    fn versions_limit_what_the_listener_accepts() {
        use rustls::crypto::aws_lc_rs::default_provider;
        use rustls::version::{TLS12, TLS13};
        let version = |sc: &rustls::ServerConnection| sc.protocol_version();
        let both = [&TLS12, &TLS13];
        let sc = handshake_with("v-both", default_provider(), BOTH, &both).unwrap();
        assert_eq!(
            version(&sc),
            Some(rustls::ProtocolVersion::TLSv1_3),
            "the newest wins"
        );
        let sc = handshake_with("v-12", default_provider(), &[Version::Tls12], &both).unwrap();
        assert_eq!(version(&sc), Some(rustls::ProtocolVersion::TLSv1_2));
        assert!(
            handshake_with("v-12-13", default_provider(), &[Version::Tls12], &[&TLS13]).is_err()
        );
        assert!(
            handshake_with("v-13-12", default_provider(), &[Version::Tls13], &[&TLS12]).is_err()
        );
    }

    #[test]
    fn the_server_picks_aes_128_gcm_sha256_over_a_client_that_prefers_aes_256() {
        use rustls::crypto::aws_lc_rs::{cipher_suite as cs, default_provider};
        // An OpenSSL-like client: AES-256-GCM-SHA384 first.
        let mut provider = default_provider();
        provider.cipher_suites = vec![cs::TLS13_AES_256_GCM_SHA384, cs::TLS13_AES_128_GCM_SHA256];
        let sc = handshake("suites", provider);
        assert_eq!(
            sc.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }

    #[test]
    fn a_client_offering_the_post_quantum_hybrid_first_gets_it_and_others_get_x25519() {
        use rustls::NamedGroup;
        use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
        // A current browser: X25519MLKEM768 first, X25519 beside it.
        let mut provider = default_provider();
        provider.kx_groups = vec![kx_group::X25519MLKEM768, kx_group::X25519];
        let sc = handshake("kx-pq", provider);
        assert_eq!(
            sc.negotiated_key_exchange_group().map(|g| g.name()),
            Some(NamedGroup::X25519MLKEM768)
        );
        // OpenSSL 3.0 (wrk, curl on Debian 12): X25519 first, no hybrid.
        let mut provider = default_provider();
        provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1];
        let sc = handshake("kx-classic", provider);
        assert_eq!(
            sc.negotiated_key_exchange_group().map(|g| g.name()),
            Some(NamedGroup::X25519)
        );
    }

    #[test]
    fn sni_picks_the_matching_certificate_and_falls_back_to_the_first() {
        let d = dir("sni");
        let (ca, ka) = self_signed(&d, "a.test");
        let (cb, kb) = self_signed(&d, "*.b.test");
        let a = load(&ca, &ka).unwrap();
        let b = load(&cb, &kb).unwrap();
        let r = SniResolver {
            certs: vec![a.clone(), b.clone()],
        };
        let is = |got: Option<Arc<CertifiedKey>>, want: &Cert| Arc::ptr_eq(&got.unwrap(), &want.0);
        assert!(is(served(&r.certs, Some("a.test")), &a));
        assert!(is(served(&r.certs, Some("www.b.test")), &b), "wildcard");
        assert!(
            is(served(&r.certs, Some("other.test")), &a),
            "no match: the first"
        );
        assert!(is(served(&r.certs, None), &a), "no SNI: the first");
        assert!(server_config(&[a, b], BOTH).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn mismatched_or_missing_files_are_refused_with_their_path() {
        let d = dir("bad");
        let (ca, _) = self_signed(&d, "a.test");
        let (_, kb) = self_signed(&d, "b.test");
        let e = load(&ca, &kb).unwrap_err();
        assert!(e.contains("does not belong"), "{e}");
        let e = load(&d.join("nope.pem"), &kb).unwrap_err();
        assert!(e.contains("nope.pem"), "{e}");
        std::fs::write(d.join("empty.pem"), "").unwrap();
        let e = load(&d.join("empty.pem"), &kb).unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A self-signed certificate whose subject alternative names are `names` (DNS names, or IP
    /// addresses where they parse as one), loaded as the config would load it.
    fn cert_for(d: &Path, file: &str, names: &[&str]) -> Cert {
        let key = rcgen::KeyPair::generate().unwrap();
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(sans)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (d.join(format!("{file}.pem")), d.join(format!("{file}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        load(&c, &k).unwrap()
    }

    /// One certificate for `a.test`, `*.b.test`, 127.0.0.1 and ::1.
    fn multi(tag: &str) -> Cert {
        let d = dir(tag);
        let cert = cert_for(&d, "multi", &["a.test", "*.b.test", "127.0.0.1", "::1"]);
        let _ = std::fs::remove_dir_all(&d);
        cert
    }

    #[test]
    fn served_picks_by_name_among_dns_wildcard_and_ip_names() {
        let d = dir("served");
        let first = cert_for(&d, "first", &["first.test"]);
        let _ = std::fs::remove_dir_all(&d);
        let m = multi("served-m");
        let certs = [first.clone(), m.clone()];
        let is = |sni: Option<&str>, want: &Cert| {
            Arc::ptr_eq(&served(&certs, sni).expect("a certificate"), &want.0)
        };
        assert!(is(Some("first.test"), &first));
        assert!(is(Some("a.test"), &m));
        assert!(is(Some("A.Test"), &m), "names compare without case");
        assert!(is(Some("x.b.test"), &m), "wildcard");
        assert!(is(Some("b.test"), &first), "a wildcard needs its label");
        assert!(is(Some("y.x.b.test"), &first), "and only one");
        assert!(is(Some("127.0.0.1"), &m));
        assert!(is(Some("::1"), &m));
        assert!(is(Some("c.test"), &first), "no match: the first");
        assert!(is(Some("not a name"), &first), "no name at all: the first");
        assert!(is(None, &first));
        // The first that matches wins, in the order given.
        let both = [m.clone(), first.clone()];
        assert!(Arc::ptr_eq(
            &served(&both, Some("first.test")).unwrap(),
            &first.0
        ));
        assert!(Arc::ptr_eq(&served(&both, Some("c.test")).unwrap(), &m.0));
        assert!(served(&[], Some("a.test")).is_none());
        assert!(served(&[], None).is_none());
    }

    #[test]
    fn a_connection_covers_its_certificates_names_whatever_the_case_port_or_final_dot() {
        let c = Covered::new(multi("cover-dns").0);
        for host in [
            "a.test",
            "A.TEST",
            "a.test:443",
            "A.TEST:8443",
            "a.test.",
            "a.test.:443",
            "x.b.test",
            "X.B.Test:8443",
            "x.b.test.",
        ] {
            assert!(c.covers(Some(host.as_bytes())), "{host}");
        }
        for host in [
            "b.test",
            "b.test:443",
            "y.x.b.test",
            "xb.test",
            "c.test",
            "a.test.c",
            "aa.test",
            "test",
        ] {
            assert!(!c.covers(Some(host.as_bytes())), "{host}");
        }
    }

    #[test]
    fn a_connection_covers_its_certificates_ip_addresses_with_or_without_a_port() {
        let c = Covered::new(multi("cover-ip").0);
        for host in [
            "127.0.0.1",
            "127.0.0.1:443",
            "[::1]",
            "[::1]:443",
            "[0:0:0:0:0:0:0:1]:8443",
        ] {
            assert!(c.covers(Some(host.as_bytes())), "{host}");
        }
        for host in [
            "127.0.0.2",
            "127.0.0.2:443",
            "[::2]:443",
            "[::1",
            "::1",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(!c.covers(Some(host.as_bytes())), "{host}");
        }
    }

    #[test]
    fn no_host_is_covered_and_what_is_no_host_name_is_not() {
        let c = Covered::new(multi("cover-junk").0);
        assert!(c.covers(None), "nothing named, nothing misdirected");
        let long = "a".repeat(300);
        let long_labels = format!("{}a.test", "a.".repeat(150));
        for host in [
            "a b",
            "a b.test",
            "",
            ":443",
            ".",
            long.as_str(),
            long_labels.as_str(),
            "a.test/x",
            "*.b.test",
        ] {
            assert!(!c.covers(Some(host.as_bytes())), "{host:?}");
        }
        assert!(!c.covers(Some(b"\xff.b.test")), "not text");
        assert!(!c.covers(Some(b"a\0.test")));
    }

    #[test]
    fn the_memo_answers_each_host_right_when_hosts_alternate() {
        let c = Covered::new(multi("memo").0);
        let rounds: [(Option<&[u8]>, bool); 10] = [
            (Some(b"a.test"), true),
            (Some(b"c.test"), false),
            (Some(b"A.TEST:8443"), true),
            (Some(b"C.TEST"), false),
            (None, true),
            (Some(b"c.test"), false),
            (Some(b"x.b.test"), true),
            (Some(b"a b"), false),
            (Some(b"x.b.test"), true),
            (Some(b"b.test"), false),
        ];
        for round in 0..3 {
            for (host, want) in rounds {
                assert_eq!(c.covers(host), want, "round {round}: {host:?}");
                // Asked again at once: the memo's answer, the same.
                assert_eq!(c.covers(host), want, "round {round} again: {host:?}");
            }
        }
        // Another connection's certificate: the memo is per connection.
        let d = dir("memo-other");
        let other = Covered::new(cert_for(&d, "c", &["c.test"]).0);
        let _ = std::fs::remove_dir_all(&d);
        assert!(other.covers(Some(b"c.test")));
        assert!(!other.covers(Some(b"a.test")));
        assert!(c.covers(Some(b"a.test")));
        assert!(!c.covers(Some(b"c.test")));
    }

    /// A host that routing sees as no name of the certificate is not covered either: otherwise
    /// a client reaches the catch-all pool (no exact or wildcard route matches) through the
    /// certificate of a site that has a pool of its own.
    #[test]
    fn a_host_that_routing_does_not_see_as_a_covered_name_is_not_covered() {
        use crate::route::{HostPattern, MAX_HOST, request_host};
        let c = Covered::new(multi("cover-routing").0);
        let exact = HostPattern::parse("a.test").unwrap();
        let wild = HostPattern::parse("*.b.test").unwrap();
        for host in ["a.test..", "a.test..:443", "x.b.test.."] {
            let mut buf = [0u8; MAX_HOST];
            let routed = request_host(host.as_bytes(), &mut buf);
            assert!(
                !exact.matches(routed) && !wild.matches(routed),
                "{host}: routing sees {routed:?}, no name of the certificate"
            );
            assert!(!c.covers(Some(host.as_bytes())), "{host}");
        }
        assert!(
            !c.covers(Some(b"[127.0.0.1]")),
            "brackets hold an IPv6 address only (RFC 3986 IP-literal)"
        );
    }

    #[test]
    fn a_connection_served_one_sites_certificate_does_not_cover_the_other_site() {
        let d = dir("two-sites");
        let shop = cert_for(&d, "shop", &["shop.test"]);
        let api = cert_for(&d, "api", &["api.test", "*.api.test"]);
        let _ = std::fs::remove_dir_all(&d);
        let certs = [shop, api];
        let on_shop = Covered::new(served(&certs, Some("shop.test")).unwrap());
        let on_api = Covered::new(served(&certs, Some("v1.api.test")).unwrap());
        assert!(on_shop.covers(Some(b"shop.test")));
        assert!(!on_shop.covers(Some(b"api.test")), "421 for the other site");
        assert!(on_api.covers(Some(b"api.test:443")));
        assert!(
            on_api.covers(Some(b"v2.api.test")),
            "reuse within the certificate"
        );
        assert!(!on_api.covers(Some(b"shop.test")));
        // Without SNI, the first certificate, and only its names.
        let no_sni = Covered::new(served(&certs, None).unwrap());
        assert!(no_sni.covers(Some(b"shop.test")));
        assert!(!no_sni.covers(Some(b"api.test")));
    }
}
