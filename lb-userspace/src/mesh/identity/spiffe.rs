//! SPIFFE IDs of workloads: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`
//! (Istio's form), and reading one from a certificate's URI SAN.

use std::fmt;
use std::str::FromStr;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{is_name, is_trust_domain};

/// A workload identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("`{0}` does not start with `spiffe://`")]
    Scheme(String),
    #[error("`{0}`: invalid trust domain")]
    TrustDomain(String),
    #[error("`{0}`: expected the path `/ns/<namespace>/sa/<service account>`")]
    Path(String),
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }

    /// Istio's principal: the ID without `spiffe://`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// The ID of a certificate: its one `spiffe://` URI SAN. `None` if the certificate does
    /// not parse, has no such SAN, has several, or the one it has is not a valid ID.
    pub fn from_cert(cert: &CertificateDer<'_>) -> Option<SpiffeId> {
        let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
        let san = x509.subject_alternative_name().ok()??;
        let mut uris = san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
            _ => None,
        });
        let one = uris.next()?;
        if uris.next().is_some() {
            return None;
        }
        one.parse().ok()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_owned()))?;
        let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !is_trust_domain(td) {
            return Err(SpiffeIdError::TrustDomain(s.to_owned()));
        }
        match path.split('/').collect::<Vec<_>>()[..] {
            ["ns", ns, "sa", sa] if is_name(ns) && is_name(sa) => Ok(Self::new(td, ns, sa)),
            _ => Err(SpiffeIdError::Path(s.to_owned())),
        }
    }
}
