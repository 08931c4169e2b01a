//! JWT with keys from a JWKS URL, served by a local IdP whose answer the tests change.

use std::time::Duration;

use http::StatusCode;
use tokio_util::sync::CancellationToken;

use super::super::{JwtProvider, JwtSettings, Keys, reason};
use super::fixtures::*;

const HOUR: Duration = Duration::from_secs(3600);

async fn provider(
    idp: &Idp,
    refresh: Duration,
    min_refetch: Duration,
    stop: &CancellationToken,
) -> JwtProvider {
    let mut s = JwtSettings::new(Keys::Jwks {
        url: idp.url.clone(),
        refresh,
        min_refetch,
    });
    s.issuer = Some(ISS.into());
    s.audiences = vec![AUD.into()];
    s.fetch_timeout = Duration::from_secs(2);
    JwtProvider::new(s, stop).await.unwrap()
}

#[tokio::test]
async fn unknown_kid_refetches_and_finds_the_rotated_key() {
    let idp = Idp::start(Reply::Jwks(jwks_with(&["rsa1"]))).await;
    let stop = CancellationToken::new();
    let p = provider(&idp, HOUR, Duration::ZERO, &stop).await;
    assert_eq!(idp.fetches(), 1, "fetched at start");
    assert!(p.verify(&rs256("rsa1", &claims("a"))).await.is_ok());
    assert_eq!(idp.fetches(), 1, "a known kid needs no fetch");

    let new_key_token = rs256("rsa2", &claims("b"));
    let f = p.verify(&new_key_token).await.unwrap_err();
    assert_eq!(f.reason, reason::UNKNOWN_KID);
    assert_eq!(idp.fetches(), 2, "an unknown kid refetches");

    idp.set(Reply::Jwks(jwks_with(&["rsa1", "rsa2"])));
    assert_eq!(p.verify(&new_key_token).await.unwrap().subject, "b");
    assert_eq!(idp.fetches(), 3);
    assert_eq!(p.jwks_status().unwrap().keys, 2);
    stop.cancel();
}

#[tokio::test]
async fn garbage_kids_refetch_at_most_once_per_min_refetch() {
    let idp = Idp::start(Reply::Jwks(jwks_with(&["rsa1"]))).await;
    let stop = CancellationToken::new();
    let p = provider(&idp, HOUR, HOUR, &stop).await;
    for i in 0..20 {
        let bogus = sign(
            jsonwebtoken::Algorithm::RS256,
            Some(&format!("garbage-{i}")),
            "rsa1",
            &claims("a"),
        );
        assert_eq!(
            p.verify(&bogus).await.unwrap_err().reason,
            reason::UNKNOWN_KID
        );
    }
    assert_eq!(
        idp.fetches(),
        1,
        "the start fetch counts within min_refetch"
    );

    // With a short bound: one refetch per window, even for concurrent requests. Tokens are
    // signed first so the requests all land well within one window.
    let tokens: Vec<String> = (0..10)
        .map(|i| {
            let kid = format!("junk-{i}");
            sign(
                jsonwebtoken::Algorithm::RS256,
                Some(&kid),
                "rsa1",
                &claims("a"),
            )
        })
        .collect();
    let idp = Idp::start(Reply::Jwks(jwks_with(&["rsa1"]))).await;
    let p = std::sync::Arc::new(provider(&idp, HOUR, Duration::from_secs(1), &stop).await);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|t| {
            let p = p.clone();
            tokio::spawn(async move { p.verify(&t).await.unwrap_err().reason })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), reason::UNKNOWN_KID);
    }
    assert_eq!(idp.fetches(), 2);
    stop.cancel();
}

#[tokio::test]
async fn idp_down_or_garbage_keeps_the_last_good_keys() {
    let idp = Idp::start(Reply::Jwks(jwks_with(&["rsa1"]))).await;
    let stop = CancellationToken::new();
    let p = provider(&idp, Duration::from_millis(50), HOUR, &stop).await;
    let healthy = p.jwks_status().unwrap();
    assert!(healthy.last_success.is_some() && healthy.last_failure.is_none());

    for (i, bad) in [
        Reply::Status(StatusCode::SERVICE_UNAVAILABLE),
        Reply::Garbage,
        Reply::Jwks(r#"{"keys": []}"#.into()),
        Reply::Jwks(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#.into()),
    ]
    .into_iter()
    .enumerate()
    {
        idp.set(bad);
        let seen = idp.fetches();
        eventually("a failed refresh", || {
            idp.fetches() >= seen + 2
                && p.jwks_status()
                    .unwrap()
                    .last_failure
                    .is_some_and(|(at, _)| at > healthy.last_success.unwrap())
        })
        .await;
        // A token never seen (not cached) still verifies with the old key.
        let id = p.verify(&rs256("rsa1", &claims(&format!("u{i}")))).await;
        assert!(id.is_ok(), "case {i}: {id:?}");
        assert_eq!(p.jwks_status().unwrap().keys, 1);
    }
    let status = p.jwks_status().unwrap();
    assert!(
        status.last_failure.unwrap().1.contains("no usable"),
        "last error names the cause"
    );

    // The IdP being gone altogether is no different.
    drop(idp);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(p.verify(&rs256("rsa1", &claims("late"))).await.is_ok());
    stop.cancel();
}

#[tokio::test]
async fn first_fetch_failing_is_not_fatal() {
    let idp = Idp::start(Reply::Status(StatusCode::INTERNAL_SERVER_ERROR)).await;
    let stop = CancellationToken::new();
    let p = provider(&idp, HOUR, Duration::ZERO, &stop).await;
    let st = p.jwks_status().unwrap();
    assert!(
        st.last_success.is_none() && st.last_failure.is_some(),
        "{st:?}"
    );
    let t = rs256("rsa1", &claims("a"));
    assert_eq!(p.verify(&t).await.unwrap_err().reason, reason::UNKNOWN_KID);
    idp.set(Reply::Jwks(jwks_with(&["rsa1"])));
    assert!(p.verify(&t).await.is_ok());
    stop.cancel();
}

#[tokio::test]
async fn background_refresh_rotates_revokes_and_stops() {
    let idp = Idp::start(Reply::Jwks(jwks_with(&["rsa1"]))).await;
    let stop = CancellationToken::new();
    let p = provider(&idp, Duration::from_millis(100), HOUR, &stop).await;
    let old = rs256("rsa1", &claims("a"));
    p.verify(&old).await.unwrap();
    assert_eq!(p.signature_checks(), 1);

    // rsa1 revoked, rsa2 added: the refresh (not a refetch: bound is an hour) picks it up,
    // and the cached rsa1 token is verified again, and fails.
    idp.set(Reply::Jwks(jwks_with(&["rsa2"])));
    // Fetches are one at a time: once fetch n+2 started, fetch n+1 (after the change) is done.
    let seen = idp.fetches();
    eventually("the refreshed key set", || idp.fetches() >= seen + 2).await;
    assert!(p.verify(&rs256("rsa2", &claims("b"))).await.is_ok());
    assert_eq!(
        p.verify(&old).await.unwrap_err().reason,
        reason::UNKNOWN_KID
    );

    stop.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = idp.fetches();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(idp.fetches(), after, "refresh went on after stop");
}
