//! Verification keys, parsed from a JWKS document or a PEM public key.
//!
//! Keys whose type we cannot verify with (symmetric `oct` keys, encryption keys, unsupported
//! curves) are skipped, so an IdP's JWKS with an extra key type still loads. Keys embedded in
//! a token (`jwk`, `jku`, `x5c` headers) are never used.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// What a key can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyKind {
    Rsa,
    /// `None`: curve not known (PEM); ring rejects a mismatch at verification.
    Ec(Option<Curve>),
    Ed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Curve {
    P256,
    P384,
}

pub(super) struct Key {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's `alg`, if it pins one.
    pub alg: Option<Algorithm>,
    pub decoding: DecodingKey,
}

impl Key {
    /// Whether a token signed with `alg` may be checked with this key.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        use Algorithm::*;
        matches!(
            (self.kind, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::Ec(None | Some(Curve::P256)), ES256)
                | (KeyKind::Ec(None | Some(Curve::P384)), ES384)
                | (KeyKind::Ed, EdDSA)
        )
    }
}

/// The usable keys of one JWKS / PEM file.
#[derive(Default)]
pub(super) struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The keys a token with `kid` may be checked against: the key with that `kid`, and keys
    /// without one (a PEM key matches any token). Without `kid`: every key.
    pub fn candidates<'a>(&'a self, kid: Option<&'a str>) -> impl Iterator<Item = &'a Key> {
        self.keys
            .iter()
            .filter(move |k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
    }

    /// Parses a JWKS document (`{"keys": [...]}`), skipping keys we cannot use; an error if
    /// none is left.
    pub fn from_jwks(bytes: &[u8]) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, raw) in doc.keys.into_iter().enumerate() {
            match serde_json::from_value::<Jwk>(raw)
                .map_err(|e| e.to_string())
                .and_then(|jwk| key_from_jwk(&jwk))
            {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => {}
                Err(e) => skipped.push(format!("key {i}: {e}")),
            }
        }
        if !skipped.is_empty() {
            tracing::warn!(keys = ?skipped, "jwks: keys skipped");
        }
        if keys.is_empty() {
            return Err("no usable signature key in the JWKS".into());
        }
        Ok(Self { keys })
    }

    /// Parses one PEM public key (SPKI or PKCS#1 RSA; EC; Ed25519). It has no `kid`.
    pub fn from_pem(bytes: &[u8]) -> Result<Self, String> {
        let (decoding, kind) = DecodingKey::from_rsa_pem(bytes)
            .map(|k| (k, KeyKind::Rsa))
            .or_else(|_| DecodingKey::from_ec_pem(bytes).map(|k| (k, KeyKind::Ec(None))))
            .or_else(|_| DecodingKey::from_ed_pem(bytes).map(|k| (k, KeyKind::Ed)))
            .map_err(|e| format!("not an RSA, EC or Ed25519 public key in PEM: {e}"))?;
        Ok(Self {
            keys: vec![Key {
                kid: None,
                kind,
                alg: None,
                decoding,
            }],
        })
    }

    /// A JWKS (text starting with `{`) or a PEM public key.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.trim_ascii_start().starts_with(b"{") {
            Self::from_jwks(bytes)
        } else {
            Self::from_pem(bytes)
        }
    }
}

/// `Ok(None)` for a key that is fine but not for us (encryption, symmetric).
fn key_from_jwk(jwk: &Jwk) -> Result<Option<Key>, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Ok(None);
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => match signing_alg(ka) {
            Some(a) => Some(a),
            None => return Ok(None),
        },
    };
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::Ec(Some(Curve::P256)),
            EllipticCurve::P384 => KeyKind::Ec(Some(Curve::P384)),
            ref c => return Err(format!("unsupported EC curve {c:?}")),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => KeyKind::Ed,
        AlgorithmParameters::OctetKeyPair(p) => {
            return Err(format!("unsupported OKP curve {:?}", p.curve));
        }
        // Symmetric keys are never accepted: that is the HS256-with-the-public-key attack.
        AlgorithmParameters::OctetKey(_) => return Ok(None),
    };
    let decoding = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok(Some(Key {
        kid: jwk.common.key_id.clone(),
        kind,
        alg,
        decoding,
    }))
}

/// The JWS algorithm a JWK's `alg` pins, or `None` for HMAC and encryption algorithms.
fn signing_alg(ka: KeyAlgorithm) -> Option<Algorithm> {
    Some(match ka {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
