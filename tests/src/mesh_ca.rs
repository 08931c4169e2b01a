//! Certificates for mesh tests: a CA written to a directory (the agent's `ca_cert_file` /
//! `ca_key_file`), and single workload certificates written in the `cert_dir` layout, with
//! any validity (expired ones too) and from any CA (foreign ones too).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use lb_userspace::mesh::identity::{BUNDLE_FILE, CERT_FILE, Ca, KEY_FILE, SpiffeId};

/// Writes a new self-signed CA for `trust_domain` to `dir/ca.pem` and `dir/ca-key.pem`;
/// returns (certificate path, key path).
pub fn write_test_ca(dir: &Path, trust_domain: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = Ca::generate(trust_domain)?;
    let (c, k) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    std::fs::write(&c, cert).with_context(|| format!("writing {}", c.display()))?;
    std::fs::write(&k, key).with_context(|| format!("writing {}", k.display()))?;
    Ok((c, k))
}

/// Issues a certificate for `id` (e.g. "spiffe://cluster.local/ns/default/sa/web") from the
/// CA files, valid from `not_before` to `not_after`, and writes it in the `cert_dir` layout
/// under `certs`: `<ns>/<sa>/cert.pem` and `key.pem`, plus `bundle.pem` (a copy of the CA
/// certificate) if there is none yet. Returns the identity's directory.
pub fn write_cert_dir_identity(
    ca_cert: &Path,
    ca_key: &Path,
    certs: &Path,
    id: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> anyhow::Result<PathBuf> {
    let id: SpiffeId = id.parse()?;
    let ca = Ca::from_pem(
        &std::fs::read_to_string(ca_cert)?,
        &std::fs::read_to_string(ca_key)?,
    )?;
    let issued = ca.issue(&id, not_before, not_after)?;
    let dir = certs.join(&id.namespace).join(&id.service_account);
    std::fs::create_dir_all(&dir)?;
    // Renamed into place, as an issuer should: the agent never reads half a file.
    for (name, text) in [(KEY_FILE, &issued.key_pem), (CERT_FILE, &issued.cert_pem)] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    let bundle = certs.join(BUNDLE_FILE);
    if !bundle.exists() {
        std::fs::copy(ca_cert, &bundle)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn writes_a_ca_and_a_cert_dir_identity() {
        let dir = std::env::temp_dir().join(format!("lb-mesh-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = write_test_ca(&dir, "cluster.local").unwrap();
        let now = SystemTime::now();
        let id = "spiffe://cluster.local/ns/default/sa/web";
        let certs = dir.join("certs");
        let at = write_cert_dir_identity(&c, &k, &certs, id, now, now + Duration::from_secs(60))
            .unwrap();
        assert_eq!(at, certs.join("default/web"));
        let pem = std::fs::read_to_string(at.join(CERT_FILE)).unwrap();
        assert_eq!(SpiffeId::from_cert_pem(&pem).unwrap().to_string(), id);
        assert!(certs.join(BUNDLE_FILE).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
