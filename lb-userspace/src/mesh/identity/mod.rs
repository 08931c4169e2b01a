//! Workload identities (SPIFFE IDs), the certificates that prove them (issued by the agent from a
//! configured CA, or read from files an external issuer writes), trust bundles, and the rustls
//! configurations the tunnel uses.
