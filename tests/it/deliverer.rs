//! The deliverer against real HTTPS receivers: connections are reused (HTTP/2 shared by the
//! endpoints of an origin, up to its stream cap, and left once the receiver closes them;
//! HTTP/1.1 one request at a time), redirects are not followed, long answers are cut at the
//! limit, slow ones time out, and nothing is sent once the lease check says no.

use std::time::Duration;

use serde_json::json;
use switchyard::config::Config;
use switchyard::deliverer::{Deliverer, Target};
use switchyard::delivery::{DeliveryId, EntryId, Job, Progress};
use switchyard::endpoint::{Endpoint, EndpointSpec};
use switchyard::load::receiver::{self, Keep, Options, Receiver, Reply, Transport};
use switchyard::signing::SigningKey;

fn deliverer(response_limit: usize) -> Deliverer {
    deliverer_with(Config {
        response_body_limit: response_limit,
        ..Config::default()
    })
}

/// A deliverer that offers HTTP/2 (`deliver_http2`).
fn http2_deliverer(config: Config) -> Deliverer {
    deliverer_with(Config {
        deliver_http2: true,
        ..config
    })
}

fn deliverer_with(config: Config) -> Deliverer {
    Deliverer::new(&Config {
        allow_private_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
        extra_root_certs: Some(receiver::ca_pem_path().into()),
        ..config
    })
    .unwrap()
}

/// A receiver that offers only HTTP/1.1, answering `body`.
async fn http1_receiver(body: Vec<u8>) -> Receiver {
    let options = Options {
        body: body.into(),
        ..Options::local(Keep::Everything, Transport::issued().http1_only())
    };
    Receiver::start_with(options, |_, _| Reply::status(200)).await
}

fn endpoint(url: &str, timeout_ms: u64) -> Endpoint {
    let (spec, _) = EndpointSpec::from_json(
        &json!({"url": url, "timeoutMs": timeout_ms, "headers": {"x-team": "growth"}}),
    )
    .unwrap();
    Endpoint {
        id: "ep_deliverer".into(),
        spec,
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        retired_secrets: vec![],
        created_at: String::new(),
        updated_at: String::new(),
        compiled: Default::default(),
    }
}

fn job(seq: u64) -> Job {
    let entry = EntryId {
        ms: 1_700_000_000_000,
        seq,
    };
    Job {
        id: DeliveryId {
            partition: 0,
            entry,
        },
        entry,
        workspace: "ws".into(),
        endpoint_id: "ep_deliverer".into(),
        rule_id: 1,
        event_id: "evt_1".into(),
        event_type: "member:created".into(),
        key: String::new(),
        body: "{\"event\":\"member:created\"}".into(),
        manual: false,
        progress: Progress::NEW,
    }
}

fn keys(ep: &Endpoint) -> Vec<SigningKey> {
    ep.signing_keys(0)
}

#[tokio::test]
async fn connections_are_reused_and_requests_carry_the_signed_headers() {
    let receiver = Receiver::ok().await;
    let d = deliverer(1024);
    let ep = endpoint(&receiver.url, 5_000);
    let target = Target::of(&ep, d.guard());
    for seq in 0..3 {
        let o = d
            .attempt(&target, &keys(&ep), &job(seq), 1, || true)
            .await
            .unwrap();
        assert!(o.succeeded(), "{:?}", o.record);
        assert_eq!(o.record.rb, "{\"ok\":true}");
        assert_eq!(o.record.h["x-team"], "growth");
    }
    assert_eq!(receiver.count(), 3);
    assert_eq!(
        receiver.connections(),
        1,
        "one TLS connection for three requests"
    );
    let got = &receiver.received()[0];
    assert_eq!(got.path, "/hook");
    assert_eq!(got.header("x-team"), "growth");
    assert_eq!(got.header("content-type"), "application/json");
    assert_eq!(got.header("webhook-id"), job(0).id.to_string());
    assert!(got.header("webhook-signature").starts_with("v1,"));
    assert!(
        got.header("host").starts_with("127.0.0.1:"),
        "{}",
        got.header("host")
    );
}

#[tokio::test]
async fn a_redirect_is_an_answer_not_an_order() {
    let elsewhere = Receiver::ok().await;
    let location = elsewhere.url.clone();
    let receiver = Receiver::start(move |_, _| Reply {
        status: 302,
        headers: vec![("location".into(), location.clone())],
        delay: Duration::ZERO,
    })
    .await;
    let d = deliverer(1024);
    let ep = endpoint(&receiver.url, 5_000);
    let o = d
        .attempt(&Target::of(&ep, d.guard()), &keys(&ep), &job(1), 1, || true)
        .await
        .unwrap();
    assert_eq!(o.status(), Some(302));
    assert_eq!(o.error().map(|e| e.0), Some("status"));
    assert_eq!(elsewhere.count(), 0, "the redirect was not followed");
}

#[tokio::test]
async fn a_long_answer_is_cut_at_the_limit_and_only_its_http1_connection_dropped() {
    let long = vec![b'a'; 200_000];
    let h2 = Receiver::start_answering(long.clone(), |_, _| Reply::status(200)).await;
    let h1 = http1_receiver(long).await;
    let d = http2_deliverer(Config {
        response_body_limit: 1024,
        ..Config::default()
    });
    for receiver in [&h2, &h1] {
        let ep = endpoint(&receiver.url, 5_000);
        let target = Target::of(&ep, d.guard());
        for seq in 0..2 {
            let o = d
                .attempt(&target, &keys(&ep), &job(seq), 1, || true)
                .await
                .unwrap();
            assert!(o.succeeded());
            assert!(o.record.tr, "truncated");
            assert_eq!(o.record.rb.len(), 1024);
        }
    }
    assert_eq!(
        h1.connections(),
        2,
        "an HTTP/1.1 connection with an unread body is closed, not pooled"
    );
    assert_eq!(
        h2.connections(),
        1,
        "on HTTP/2 only the stream is reset; the connection carries the next request"
    );
}

#[tokio::test]
async fn the_endpoints_of_an_http2_origin_share_connections_up_to_the_stream_cap() {
    const STREAMS: usize = 10;
    let receiver = Receiver::start(|_, i| Reply {
        status: 200,
        headers: vec![],
        // The first request opens the connection; the others are all in flight at once.
        delay: if i == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(1_000)
        },
    })
    .await;
    let d = http2_deliverer(Config {
        http2_streams_per_connection: STREAMS,
        ..Config::default()
    });
    let endpoints: Vec<Endpoint> = (0..=STREAMS + STREAMS / 2)
        .map(|i| endpoint(&format!("{}/{i}", receiver.url), 10_000))
        .collect();
    let targets: Vec<_> = endpoints
        .iter()
        .map(|ep| Target::of(ep, d.guard()))
        .collect();
    let first = d
        .attempt(&targets[0], &keys(&endpoints[0]), &job(0), 1, || true)
        .await
        .unwrap();
    assert!(first.succeeded(), "{:?}", first.record);
    let rest = futures::future::join_all(
        endpoints
            .iter()
            .zip(&targets)
            .skip(1)
            .map(|(ep, target)| async { d.attempt(target, &keys(ep), &job(1), 1, || true).await }),
    )
    .await;
    assert!(rest.iter().all(|o| o.as_ref().unwrap().succeeded()));
    let got = receiver.received();
    assert_eq!(got.len(), endpoints.len());
    assert!(got.iter().all(|r| r.version == http::Version::HTTP_2));
    assert!(receiver.max_concurrent() > STREAMS);
    assert_eq!(
        receiver.connections(),
        2,
        "{} requests in flight at once fill one connection and half of a second",
        endpoints.len() - 1
    );
}

#[tokio::test]
async fn an_http2_connection_the_receiver_closed_is_left_for_a_new_one() {
    let first = Receiver::ok().await;
    let addr = first.addr;
    let d = http2_deliverer(Config::default());
    let ep = endpoint(&first.url, 5_000);
    let target = Target::of(&ep, d.guard());
    let o = d.attempt(&target, &keys(&ep), &job(0), 1, || true).await;
    assert!(o.unwrap().succeeded());
    assert_eq!(first.received()[0].version, http::Version::HTTP_2);
    // The receiver stops (closing its connection) and another takes its address.
    first.stop().await;
    let second = Receiver::start_with(
        Options {
            listen: addr,
            ..Options::local(Keep::Everything, Transport::issued())
        },
        |_, _| Reply::status(200),
    )
    .await;
    // A request that meets the closing connection may fail (the dispatcher retries it); the
    // pool must not keep handing that connection out.
    let mut outcomes = vec![];
    for seq in 1..=3 {
        let o = d.attempt(&target, &keys(&ep), &job(seq), 1, || true).await;
        outcomes.push(o.unwrap());
    }
    assert!(
        outcomes[1..].iter().all(|o| o.succeeded()),
        "{:?}",
        outcomes.iter().map(|o| &o.record).collect::<Vec<_>>()
    );
    assert_eq!(second.connections(), 1, "one new connection, kept");
    assert!(second.received().len() >= 2);
}

#[tokio::test]
async fn http1_is_spoken_where_http2_is_not_offered_or_not_wanted() {
    let h1 = http1_receiver(b"{}".to_vec()).await;
    let h2 = Receiver::ok().await;
    let wants_h2 = http2_deliverer(Config::default());
    let by_default = deliverer(1024);
    for (d, receiver) in [(&wants_h2, &h1), (&by_default, &h2)] {
        let ep = endpoint(&receiver.url, 5_000);
        let target = Target::of(&ep, d.guard());
        for seq in 0..2 {
            let o = d.attempt(&target, &keys(&ep), &job(seq), 1, || true).await;
            assert!(o.unwrap().succeeded());
        }
        assert_eq!(receiver.connections(), 1, "kept alive");
        let got = receiver.received();
        assert!(got.iter().all(|r| r.version == http::Version::HTTP_11));
    }
}

#[tokio::test]
async fn a_slow_answer_times_out_and_a_refused_send_sends_nothing() {
    let receiver = Receiver::start(|_, _| Reply {
        status: 200,
        headers: vec![],
        delay: Duration::from_secs(3),
    })
    .await;
    let d = deliverer(1024);
    let ep = endpoint(&receiver.url, 300);
    let target = Target::of(&ep, d.guard());
    let started = std::time::Instant::now();
    let o = d
        .attempt(&target, &keys(&ep), &job(1), 1, || true)
        .await
        .unwrap();
    assert_eq!(o.error().map(|e| e.0), Some("timeout"), "{:?}", o.record);
    assert!(started.elapsed() < Duration::from_secs(2));
    let before = receiver.count();
    assert!(
        d.attempt(&target, &keys(&ep), &job(2), 1, || false)
            .await
            .is_none()
    );
    assert_eq!(
        receiver.count(),
        before,
        "nothing sent once the check says no"
    );
}

#[tokio::test]
async fn a_forbidden_url_fails_for_good_without_a_connection() {
    let d = deliverer(1024);
    let ep = endpoint("https://10.1.2.3/hook", 5_000);
    let target = Target::of(&ep, d.guard());
    assert!(target.is_err());
    let o = d
        .attempt(&target, &keys(&ep), &job(1), 1, || true)
        .await
        .unwrap();
    assert_eq!(o.error().map(|e| e.0), Some("ssrf"));
    assert!(o.final_failure);
}
