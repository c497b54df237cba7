//! Secrets named by the config (`affinity.keys`, `admin.token`): `file:PATH` or `env:NAME`,
//! never written inline. Reading them goes through a [`KeySource`], so tests and the fuzzer
//! load configs without touching the file system or the environment.

use std::path::Path;

use toml::Spanned;

use crate::token::MIN_SECRET_LEN;

/// A secret key. Its bytes never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Where key specs and relative key paths are resolved.
pub trait KeySource {
    /// Contents of a key file.
    fn file(&self, path: &Path) -> std::io::Result<Vec<u8>>;
    /// Value of an environment variable.
    fn env(&self, name: &str) -> Option<Vec<u8>>;
}

/// Keys from the real file system and environment.
pub struct SystemKeys;

impl KeySource for SystemKeys {
    fn file(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn env(&self, name: &str) -> Option<Vec<u8>> {
        std::env::var_os(name).map(|v| v.into_encoded_bytes())
    }
}

/// The secret `spec` names (a relative file is taken from `dir`), whitespace trimmed, at least
/// [`MIN_SECRET_LEN`] bytes. The caller points an error at the spec.
pub(super) fn resolve(
    spec: &Spanned<String>,
    dir: &Path,
    src: &dyn KeySource,
) -> Result<Secret, String> {
    let raw = if let Some(p) = spec.get_ref().strip_prefix("file:") {
        let path = dir.join(p);
        src.file(&path)
            .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?
    } else if let Some(name) = spec.get_ref().strip_prefix("env:") {
        src.env(name)
            .ok_or_else(|| format!("environment variable {name} is not set"))?
    } else {
        return Err(format!(
            "invalid key spec {:?}: expected \"file:PATH\" or \"env:NAME\" (keys are never written inline)",
            spec.get_ref()
        ));
    };
    let secret = raw.trim_ascii();
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "key {:?} is {} bytes; at least {MIN_SECRET_LEN} are required (e.g. `openssl rand -base64 48`)",
            spec.get_ref(),
            secret.len()
        ));
    }
    Ok(Secret(secret.to_vec()))
}
