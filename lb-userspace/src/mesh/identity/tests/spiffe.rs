use super::super::{SpiffeId, SpiffeIdError};

#[test]
fn parses_and_formats() {
    let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
    assert_eq!(id, SpiffeId::new("cluster.local", "default", "web"));
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
    assert_eq!(id.principal(), "cluster.local/ns/default/sa/web");
    assert_eq!(id.to_string().parse::<SpiffeId>().unwrap(), id);
}

#[test]
fn refuses_malformed_ids() {
    let err = |s: &str| s.parse::<SpiffeId>().unwrap_err();
    assert!(matches!(
        err("https://cluster.local/ns/a/sa/b"),
        SpiffeIdError::Scheme(_)
    ));
    assert!(matches!(
        err("spiffe://Cluster.Local/ns/a/sa/b"),
        SpiffeIdError::TrustDomain(_)
    ));
    assert!(matches!(
        err("spiffe:///ns/a/sa/b"),
        SpiffeIdError::TrustDomain(_)
    ));
    for bad in [
        "spiffe://cluster.local",
        "spiffe://cluster.local/ns/a",
        "spiffe://cluster.local/ns/a/sa/",
        "spiffe://cluster.local/ns/a/sa/b/c",
        "spiffe://cluster.local/sa/b/ns/a",
        "spiffe://cluster.local/ns/../sa/b",
        "spiffe://cluster.local/ns/a b/sa/b",
    ] {
        assert!(matches!(err(bad), SpiffeIdError::Path(_)), "{bad}");
    }
}
