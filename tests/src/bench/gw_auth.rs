//! Credentials for the gateway bench's auth configurations: an RSA key made with
//! `openssl genpkey`, its JWKS (read by this gateway and by Envoy's `jwt_authn`), one RS256
//! token signed with `jsonwebtoken` that every request reuses, and an API key with the
//! gateway's SHA-256 key file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};

use crate::netns::run_checked;

/// `iss` of the token, required by every JWT configuration.
pub const ISSUER: &str = "lb-bench";
/// `aud` of the token, required by every JWT configuration.
pub const AUDIENCE: &str = "lb-bench";
/// `kid` of the one signing key.
const KID: &str = "lb-bench-1";
/// Header carrying the API key (the gateway's default; nginx's `map` reads the same).
pub const API_KEY_HEADER: &str = "x-api-key";

/// Files and secrets, all under the lab's scratch directory.
#[derive(Debug, Clone)]
pub struct AuthMaterial {
    /// JWKS document with the public key.
    pub jwks_path: PathBuf,
    /// A valid RS256 token (valid for a day).
    pub token: String,
    /// The API key as clients send it.
    pub api_key: String,
    /// The gateway's key file (`[[key]]` with the key's SHA-256).
    pub api_keys_path: PathBuf,
}

impl AuthMaterial {
    /// Makes the key, the JWKS, the token and the API-key file in `dir`.
    pub fn create(dir: &Path) -> Result<AuthMaterial> {
        let key = dir.join("jwt-key.pem");
        run_checked(
            Command::new("openssl")
                .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
                .arg("rsa_keygen_bits:2048")
                .arg("-out")
                .arg(&key),
        )
        .context("openssl genpkey")?;
        let jwks_path = dir.join("jwks.json");
        std::fs::write(&jwks_path, jwks(&key)?)?;
        let token = sign(&std::fs::read(&key)?)?;

        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let api_key = format!("lbbench-{:x}-{}", nanos, std::process::id());
        let api_keys_path = dir.join("api-keys.toml");
        std::fs::write(
            &api_keys_path,
            format!(
                "[[key]]\nname = \"bench\"\nsha256 = \"{}\"\n",
                hex::encode(Sha256::digest(api_key.as_bytes()))
            ),
        )?;
        Ok(AuthMaterial {
            jwks_path,
            token,
            api_key,
            api_keys_path,
        })
    }

    /// The `Authorization` header line wrk sends.
    pub fn bearer_header(&self) -> String {
        format!("Authorization: Bearer {}", self.token)
    }

    /// The API-key header line wrk sends.
    pub fn api_key_header(&self) -> String {
        format!("{API_KEY_HEADER}: {}", self.api_key)
    }
}

/// The JWKS of the RSA key in `key_pem`: modulus from `openssl rsa -modulus`, exponent
/// 65537 (what `genpkey` uses unless told otherwise; checked).
fn jwks(key_pem: &Path) -> Result<String> {
    let text = run_checked(
        Command::new("openssl")
            .args(["rsa", "-noout", "-text", "-modulus", "-in"])
            .arg(key_pem),
    )
    .context("openssl rsa -modulus")?;
    let text = String::from_utf8_lossy(&text.stdout);
    anyhow::ensure!(
        text.contains("publicExponent: 65537"),
        "the RSA key's exponent is not 65537"
    );
    let modulus = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Modulus="))
        .context("no Modulus= line from openssl")?;
    let n = hex::decode(modulus).context("modulus hex")?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Ok(serde_json::json!({
        "keys": [{
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": KID,
            "n": b64.encode(n),
            "e": b64.encode([1u8, 0, 1]),
        }]
    })
    .to_string())
}

/// An RS256 token with `sub`, `iss`, `aud`, `iat` and `exp` (a day ahead).
fn sign(key_pem: &[u8]) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.into());
    let claims = serde_json::json!({
        "sub": "bench-user",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 86_400,
    });
    let key = EncodingKey::from_rsa_pem(key_pem).context("the RSA key for signing")?;
    jsonwebtoken::encode(&header, &claims, &key).context("sign the token")
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};

    #[test]
    fn token_verifies_against_the_jwks_and_key_file_holds_the_hash() {
        let dir = crate::bench::lab::ScratchDir::new().unwrap();
        let m = AuthMaterial::create(dir.path()).unwrap();
        let set: JwkSet =
            serde_json::from_str(&std::fs::read_to_string(&m.jwks_path).unwrap()).unwrap();
        let jwk = set.find(KID).expect("kid in the JWKS");
        let mut v = Validation::new(Algorithm::RS256);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[AUDIENCE]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &m.token,
            &DecodingKey::from_jwk(jwk).unwrap(),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "bench-user");
        // A token from another key must not verify with this JWKS.
        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        let m2 = AuthMaterial::create(&other).unwrap();
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(
                &m2.token,
                &DecodingKey::from_jwk(jwk).unwrap(),
                &v
            )
            .is_err()
        );
        let keys = std::fs::read_to_string(&m.api_keys_path).unwrap();
        assert!(keys.contains(&hex::encode(Sha256::digest(m.api_key.as_bytes()))));
        assert!(m.bearer_header().starts_with("Authorization: Bearer ey"));
    }
}
