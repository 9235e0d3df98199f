//! Micro-benchmarks of the hot paths that do not touch the network: rule matching, payload
//! build and serialisation, signing, SSRF address classification, payload transforms.
//!
//! `cargo bench --bench micro`

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Map, Value, json};
use switchyard::rule::{Action, Rule, RuleSet, RuleSpec};
use switchyard::signing::{SigningKey, generate_secret, signature_header};
use switchyard::ssrf::{Guard, forbidden_reason};

const TYPES: &[&str] = switchyard::event::EVENT_TYPES;

/// 1,000 rules over the 10 event types: exact types, family wildcards and a few catch-alls,
/// most with a condition, as a busy workspace would have.
fn rules() -> Vec<Rule> {
    (0..1000u64)
        .map(|i| {
            let events = match i % 20 {
                0 => vec!["*".to_string()],
                1..=4 => vec![format!("{}:*", TYPES[(i % 10) as usize].split(':').next().unwrap())],
                _ => vec![TYPES[(i % 10) as usize].to_string()],
            };
            let conditions = (i % 3 != 0).then(|| {
                json!({"all": [
                    {"field": "dataRecord.fields.priority", "op": "eq", "value": if i % 2 == 0 { "high" } else { "low" }},
                    {"field": "member.labels", "op": "contains", "value": format!("label-{}", i % 7)}]})
            });
            Rule {
                id: i + 1,
                uuid: format!("u{i}"),
                spec: RuleSpec {
                    name: format!("rule {i}"),
                    events: Some(events),
                    conditions,
                    actions: vec![Action::Webhook { endpoint_id: format!("ep_{i}") }],
                    enabled: true,
                    schedule: None,
                    payload: None,
                },
                created_at: String::new(),
                updated_at: String::new(),
            }
        })
        .collect()
}

fn event(t: &str) -> Map<String, Value> {
    json!({"event": t, "dataType": {"uuid": "5f3c", "type": "Contact Form", "slug": "contact_form"},
        "member": {"id": 123, "name": "John Doe", "email": "john@example.com", "labels": ["vip", "label-3"]},
        "dataRecord": {"id": 4567, "fields": {"message": "Hello!", "priority": "high"}}})
    .as_object()
    .unwrap()
    .clone()
}

fn rule_matching(c: &mut Criterion) {
    let set = RuleSet::build(&rules());
    let events: Vec<_> = TYPES.iter().map(|t| (t.to_string(), event(t))).collect();
    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("match 10 events against 1000 rules", |b| {
        b.iter(|| {
            for (t, body) in &events {
                black_box(set.matching(t, body));
            }
        })
    });
    g.finish();
}

fn payload(c: &mut Criterion) {
    let body = event("data_record:created");
    let rule = json!({"id": 88, "uuid": "a1b2", "name": "Notify CRM"});
    let ws = json!({"uuid": "9e8d", "name": "Acme Health"});
    c.bench_function("payload build + serialise", |b| {
        b.iter(|| {
            let mut p = body.clone();
            p.insert("eventRule".into(), rule.clone());
            p.insert("workspace".into(), ws.clone());
            black_box(serde_json::to_string(&p).unwrap())
        })
    });
}

/// The signature as it was made before the keyed HMAC state was kept: the key decoded once,
/// but the HMAC keyed, the timestamp formatted and the entry built anew on every call.
fn sign_rekeyed(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let entry = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    );
    [entry].join(" ")
}

fn signing(c: &mut Criterion) {
    use base64::Engine;
    let secret = generate_secret();
    let key = SigningKey::parse(&secret).unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    for size in [220, 1024] {
        let body = vec![b'x'; size];
        let mut g = c.benchmark_group("signing");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("sign {size} B"), |b| {
            b.iter(|| {
                black_box(signature_header(
                    std::slice::from_ref(&key),
                    "msg_1",
                    1_700_000_000,
                    &body,
                ))
            })
        });
        let same = sign_rekeyed(&raw, "msg_1", 1_700_000_000, &body);
        assert_eq!(same, key.sign("msg_1", 1_700_000_000, &body));
        g.bench_function(format!("sign {size} B, keyed per call (before)"), |b| {
            b.iter(|| black_box(sign_rekeyed(&raw, "msg_1", 1_700_000_000, &body)))
        });
        g.finish();
    }
}

fn ssrf(c: &mut Criterion) {
    let ips: Vec<IpAddr> = [
        "8.8.8.8",
        "10.1.2.3",
        "::ffff:127.0.0.1",
        "2606:4700::1111",
        "100.64.1.1",
        "198.51.100.7",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let guard = Guard::default();
    let mut g = c.benchmark_group("ssrf");
    g.throughput(Throughput::Elements(ips.len() as u64));
    g.bench_function("classify 6 addresses", |b| {
        b.iter(|| {
            for ip in &ips {
                black_box(forbidden_reason(*ip));
                black_box(guard.check_ip(*ip).is_ok());
            }
        })
    });
    g.finish();
}

/// Payload transforms, rendered once per (event, endpoint) at ingest: the Slack preset's
/// default message, and a 10-line template making a CRM's body.
fn transforms(c: &mut Criterion) {
    let mut payload = event("data_record:created");
    payload.insert(
        "eventRule".into(),
        json!({"id": 88, "uuid": "a1b2", "name": "Notify CRM"}),
    );
    payload.insert(
        "workspace".into(),
        json!({"uuid": "9e8d", "name": "Acme Health"}),
    );
    let spec =
        |v: Value| -> switchyard::transform::TransformSpec { serde_json::from_value(v).unwrap() };
    let slack = spec(json!({"preset": "slack"})).compile().unwrap();
    let template = spec(json!({"template": concat!(
        "{\n",
        "  \"type\": {{ event|tojson }},\n",
        "  \"contact\": {\n",
        "    \"name\": {{ member.name|tojson }},\n",
        "    \"email\": {{ member.email|tojson }},\n",
        "    \"vip\": {{ ('vip' in member.labels)|tojson }}\n",
        "  },\n",
        "  \"record\": {{ dataRecord.id }},\n",
        "  \"source\": {{ workspace.name|tojson }}\n",
        "}"
    )}))
    .compile()
    .unwrap();
    let mut g = c.benchmark_group("transform");
    g.bench_function("slack preset", |b| {
        b.iter(|| black_box(slack.render(&payload).unwrap()))
    });
    g.bench_function("10-line template", |b| {
        b.iter(|| black_box(template.render(&payload).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, rule_matching, payload, signing, ssrf, transforms);
criterion_main!(benches);
