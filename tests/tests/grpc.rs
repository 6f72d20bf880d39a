//! The gRPC surface of a real node: kv.v1.Kv metadata, standard health, reflection, and the
//! admin endpoints.

use bytes::Bytes;
use kv_proto::kv::v1 as pb;
use kv_proto::kv::v1::kv_client::KvClient;
use kv_tests::{NodeProcess, http_get, kvctl};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn node_serves_health_reflection_and_response_metadata() {
    let node = NodeProcess::start(&["--storage", "memory", "--id", "n3"]).expect("start");
    let uri = format!("http://{}", node.endpoint());

    let channel = tonic::transport::Endpoint::from_shared(uri.clone())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "kv.v1.Kv"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "service {service:?}");
    }

    // Reflection lists the services, as grpcurl would see them.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut refl = ServerReflectionClient::new(channel);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::once(req))
        .await
        .expect("reflection")
        .into_inner();
    let resp = stream
        .message()
        .await
        .expect("message")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer {resp:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"kv.v1.Kv"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let mut kv = KvClient::connect(uri).await.expect("connect");
    let put = kv
        .put(pb::PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            consistency: None,
        })
        .await
        .expect("put")
        .into_inner();
    let meta = put.meta.expect("meta");
    assert_eq!(meta.coordinator, "n3");
    assert_eq!(meta.replicas, vec!["n3".to_string()]);
    assert!(!meta.degraded && !meta.stale);
    assert_eq!(meta.achieved.expect("achieved").w, 1);

    let bad = kv
        .get(pb::GetRequest {
            key: Bytes::from_static(b"k"),
            consistency: Some(pb::Consistency {
                read_from: 42,
                ..Default::default()
            }),
        })
        .await
        .expect_err("unknown enum value");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("read_from=42"), "{}", bad.message());

    let (status, body) = http_get(node.admin, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    for needle in [
        r#"kv_requests_total{op="put",code="ok"} 1"#,
        r#"kv_requests_total{op="get",code="invalid_argument"} 1"#,
        "kv_request_duration_seconds_bucket",
        "kv_storage_keys 1",
        r#"kv_node_info{id="n3""#,
    ] {
        assert!(body.contains(needle), "{needle} missing from:\n{body}");
    }
    assert_eq!(http_get(node.admin, "/healthz").expect("healthz").0, 200);
    assert_eq!(http_get(node.admin, "/readyz").expect("readyz").0, 200);
    assert_eq!(http_get(node.admin, "/nope").expect("404").0, 404);
}

#[tokio::test]
async fn node_fsync_metrics_show_group_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("d");
    let node = NodeProcess::start(&[
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--fsync",
        "batch",
    ])
    .expect("start");
    let metrics = put_concurrently(&node, 32, 20).await;
    let records = metrics("kv_fsync_batch_records_sum ");
    let fsyncs = metrics("kv_fsync_batch_records_count ");
    assert_eq!(records, 640.0);
    assert!(fsyncs < 640.0, "640 concurrent writes took {fsyncs} fsyncs");
    metrics("kv_fsync_duration_seconds_count ");
}

/// `writers` clients each put `each` keys one after another; then the node's metrics, as a
/// lookup of one sample by name (with its trailing space).
async fn put_concurrently(node: &NodeProcess, writers: usize, each: usize) -> impl Fn(&str) -> f64 {
    let mut tasks = Vec::new();
    for t in 0..writers {
        let uri = format!("http://{}", node.endpoint());
        tasks.push(tokio::spawn(async move {
            let mut kv = KvClient::connect(uri).await.expect("connect");
            for i in 0..each {
                kv.put(pb::PutRequest {
                    key: Bytes::from(format!("{t}-{i}")),
                    value: Bytes::from_static(b"v"),
                    consistency: None,
                })
                .await
                .expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let (_, body) = http_get(node.admin, "/metrics").expect("metrics");
    move |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing:\n{body}"))
    }
}

/// Group commit on a slow disk (`kvctl fault disk`, every flush 40 ms slower): the writers
/// one flush acknowledges come back together, and the next flush waits for them
/// (`storage::gather`) instead of starting with the first to arrive and leaving the others
/// for the flush after. Without that rule they settle into two groups taking turns, about
/// half of them per flush. Asserted: every write flushed, and flushes waited (the rule is
/// wired into the store). How many writes a flush carries is printed, not asserted: it
/// depends on the writers coming back within the window (at most 10 ms), so on the machine's
/// speed (6.6-6.9 in three runs on a slow evening, 5.3 in a CI run beside them against the
/// 5.5 this test once asserted). The rule's effect is asserted by `storage::gather`'s
/// simulated writers and measured by `bench/scripts/single-node.sh` (16 writers on a 4 ms
/// disk at 81% of 16 writes per flush time).
#[tokio::test]
async fn closed_loop_writers_on_a_slow_disk_make_flushes_wait_for_them() {
    const WRITERS: usize = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("d");
    let node = NodeProcess::start(&[
        "--id",
        "n1",
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--fsync",
        "batch",
        "--enable-fault-injection",
    ])
    .expect("start");
    let r = kvctl(&node.endpoint(), &["fault", "disk", "n1", "40ms"]);
    assert_eq!(r.code, 0, "{r:?}");
    let value = put_concurrently(&node, WRITERS, 50).await;
    let records = value("kv_fsync_batch_records_sum ");
    let flushes = value("kv_fsync_batch_records_count ");
    eprintln!(
        "{WRITERS} writers: {:.1} writes per flush over {flushes} flushes",
        records / flushes
    );
    assert_eq!(records, (WRITERS * 50) as f64);
    assert!(
        value("kv_fsync_gather_seconds_sum ") > 0.0,
        "no flush waited"
    );
}
