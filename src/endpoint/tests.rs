//! The endpoint spec's defaults, validation, PATCH merge and secret rotation.

use super::*;
use serde_json::json;

#[test]
fn defaults_are_the_contracts() {
    let (spec, _) =
        EndpointSpec::from_json(&json!({"url": "https://crm.example.com/hooks"})).unwrap();
    assert_eq!(spec.ordering, Ordering::Strict);
    assert_eq!(spec.max_in_flight, 1);
    assert_eq!(spec.retry, RetryPolicy::default());
    assert_eq!(spec.timeout_ms, 15_000);
    assert!(spec.enabled && spec.rate_limit.is_none());
}

#[test]
fn the_default_schedule_is_10_20_40_80_seconds() {
    let p = RetryPolicy::default();
    let secs: Vec<u64> = (1..5).map(|n| p.delay_after(n).as_secs()).collect();
    assert_eq!(secs, vec![10, 20, 40, 80]);
    for n in 1..5 {
        let j = p.jittered_delay_after(n).as_secs_f64();
        let base = p.delay_after(n).as_secs_f64();
        assert!(j >= base * 0.9 - 1e-9 && j <= base * 1.1 + 1e-9);
    }
    let capped = RetryPolicy {
        max_delay_ms: 30_000,
        ..p
    };
    assert_eq!(capped.delay_after(4).as_secs(), 30);
}

#[test]
fn bad_specs_name_the_field() {
    let field = |v: Value| EndpointSpec::from_json(&v).unwrap_err().field;
    assert_eq!(field(json!({})), "url");
    assert_eq!(field(json!({"url": "not a url"})), "url");
    assert_eq!(
        field(json!({"url": "https://x.io", "retry": {"maxAttempts": 0}})),
        "retry.maxAttempts"
    );
    assert_eq!(
        field(json!({"url": "https://x.io", "rateLimit": {"perSecond": 0}})),
        "rateLimit.perSecond"
    );
    assert_eq!(
        field(json!({"url": "https://x.io", "ordering": "random"})),
        "ordering"
    );
    assert_eq!(
        field(json!({"url": "https://x.io", "headers": {"Webhook-Id": "x"}})),
        "headers.Webhook-Id"
    );
    assert_eq!(
        field(json!({"url": "https://x.io", "maxInFlight": 4})),
        "maxInFlight"
    );
    assert_eq!(
        field(json!({"url": "https://x.io", "orderingKey": "member..id"})),
        "orderingKey"
    );
    assert!(
        EndpointSpec::from_json(
            &json!({"url": "https://x.io", "orderingKey": "member.id", "maxInFlight": 50})
        )
        .is_ok(),
        "strict per key takes up to maxInFlight key values"
    );
    assert_eq!(
        field(json!({"url": "https://x.io", "colour": "red"})),
        "colour"
    );
}

#[test]
fn custom_headers_are_bounded_unique_and_never_hop_by_hop() {
    let spec = |headers: Value| {
        EndpointSpec::from_json(&json!({"url": "https://x.io", "headers": headers}))
    };
    for name in [
        "Keep-Alive",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Upgrade",
        "Expect",
        "Content-Encoding",
        "Connection",
        "Transfer-Encoding",
    ] {
        let e = spec(json!({name: "x"})).unwrap_err();
        assert_eq!(e.field, format!("headers.{name}"), "{name}");
    }
    assert!(spec(json!({"Authorization": "Bearer t", "X-Team": "growth"})).is_ok());
    let twice = spec(json!({"X-A": "1", "x-a": "2"})).unwrap_err();
    assert!(
        twice.field == "headers.x-a" || twice.field == "headers.X-A",
        "{twice:?}"
    );
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("X-H{i}"), json!("v"))).collect();
    assert_eq!(spec(Value::Object(many)).unwrap_err().field, "headers");
    let big = "v".repeat(MAX_HEADER_VALUE + 1);
    assert_eq!(
        spec(json!({"X-Big": big})).unwrap_err().field,
        "headers.X-Big"
    );
    let total: serde_json::Map<String, Value> = (0..5)
        .map(|i| (format!("X-H{i}"), json!("v".repeat(4000))))
        .collect();
    assert_eq!(spec(Value::Object(total)).unwrap_err().field, "headers");
}

#[test]
fn urls_are_trimmed_and_inner_blanks_refused() {
    let (spec, _) = EndpointSpec::from_json(&json!({"url": "  https://x.io/h \n"})).unwrap();
    assert_eq!(spec.url, "https://x.io/h");
    for bad in [
        "https://x.io/a b",
        "https://ex\tample.com/",
        "https://x.io/\u{7f}",
    ] {
        assert_eq!(
            EndpointSpec::from_json(&json!({"url": bad}))
                .unwrap_err()
                .field,
            "url",
            "{bad:?}"
        );
    }
}

#[test]
fn rotation_keeps_the_old_secret_signing_for_its_grace_only() {
    let (spec, _) = EndpointSpec::from_json(&json!({"url": "https://x.io"})).unwrap();
    let first = crate::signing::generate_secret();
    let mut ep = Endpoint {
        id: "ep".into(),
        spec,
        secret: first.clone(),
        retired_secrets: vec![],
        created_at: String::new(),
        updated_at: String::new(),
        compiled: Default::default(),
    };
    ep.rotate(crate::signing::generate_secret(), 1_000, 500);
    assert_eq!(ep.signing_keys(1_000).len(), 2);
    assert_eq!(ep.signing_keys(1_500).len(), 1);
    assert_ne!(ep.secret, first);
    let shown = ep.secrets_view(1_000);
    assert_eq!(shown.previous_secrets[0].secret, first);
    assert!(ep.secrets_view(1_500).previous_secrets.is_empty());
}

#[test]
fn a_patch_merges_and_revalidates() {
    let (spec, _) =
        EndpointSpec::from_json(&json!({"url": "https://x.io", "rateLimit": {"perSecond": 5}}))
            .unwrap();
    let (p, _) = spec
        .patched(&json!({"rateLimit": null, "ordering": "unordered", "maxInFlight": 8}))
        .unwrap();
    assert_eq!(
        (p.rate_limit, p.max_in_flight, p.url.as_str()),
        (None, 8, "https://x.io")
    );
    assert_eq!(
        spec.patched(&json!({"timeoutMs": 0})).unwrap_err().field,
        "timeoutMs"
    );
}
