//! Messages that are not valid orders go to the dead-letter queue at once, with the §6 headers
//! and an `aws.account.dead-lettered` event, and the worker keeps consuming.

use std::collections::BTreeMap;

use aws_account_worker::broker::headers::{HEADERS_BUDGET_BYTES, encoded_len};
use aws_account_worker::domain::bounded::MAX_INPUT_TEXT_BYTES;
use serde_json::{Value, json};

use crate::support::{TestEnv, header_text, order};

#[tokio::test(flavor = "multi_thread")]
async fn malformed_messages_are_dead_lettered_and_the_next_order_is_processed() {
    let mut env = TestEnv::new("").await;
    let worker = env.spawn_worker().await;

    let not_a_purchase = {
        let mut o = order(&[], &[]);
        o["type"] = json!("adjustment");
        o
    };
    let missing_asset_id = {
        let mut o = order(&[], &[]);
        o["asset"].as_object_mut().expect("asset").remove("id");
        o
    };
    let too_large = {
        let mut o = order(&[], &[]);
        o["padding"] = json!("x".repeat(1024 * 1024));
        o
    };
    // reason → body
    let bad: BTreeMap<&str, Vec<u8>> = BTreeMap::from([
        ("NOT_JSON", b"this is { not json".to_vec()),
        (
            "UNKNOWN_REQUEST_TYPE",
            not_a_purchase.to_string().into_bytes(),
        ),
        ("MISSING_FIELD", missing_asset_id.to_string().into_bytes()),
        ("MESSAGE_TOO_LARGE", too_large.to_string().into_bytes()),
    ]);
    for body in bad.values() {
        env.publish(body).await;
    }
    let good = order(&[], &[]);
    env.publish_json(&good).await;

    let mut dead_lettered = BTreeMap::new();
    let mut provisioned = Vec::new();
    for _ in 0..bad.len() + 1 {
        let event = env.next_event().await;
        match event["event"].as_str() {
            Some("aws.account.dead-lettered") => {
                let reason = event["reason"].as_str().expect("reason").to_owned();
                dead_lettered.insert(reason, event);
            }
            Some("aws.account.provisioned") => provisioned.push(event),
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(
        dead_lettered.keys().map(String::as_str).collect::<Vec<_>>(),
        bad.keys().copied().collect::<Vec<_>>()
    );
    assert_eq!(
        provisioned.len(),
        1,
        "the good order after the bad ones is provisioned"
    );
    assert_eq!(provisioned[0]["request_id"], good["id"]);
    let not_purchase_event = &dead_lettered["UNKNOWN_REQUEST_TYPE"];
    assert_eq!(
        not_purchase_event["request_id"], not_a_purchase["id"],
        "readable ids are kept"
    );
    assert_eq!(
        not_purchase_event["asset_id"],
        not_a_purchase["asset"]["id"]
    );
    assert_eq!(not_purchase_event["attempts"], 1);
    assert_eq!(dead_lettered["NOT_JSON"]["request_id"], Value::Null);

    let dlq = env.drain_dlq().await;
    assert_eq!(
        dlq.len(),
        bad.len(),
        "every malformed message is in the DLQ, once"
    );
    for (headers, body) in &dlq {
        let reason = header_text(headers, "x-failure-reason").expect("x-failure-reason");
        assert_eq!(
            Some(body),
            bad.get(reason.as_str()),
            "the DLQ keeps the original body for {reason}"
        );
        assert_eq!(header_text(headers, "x-attempts").as_deref(), Some("1"));
        assert!(
            header_text(headers, "x-failure-message")
                .is_some_and(|m| !m.is_empty() && m.len() <= MAX_INPUT_TEXT_BYTES)
        );
        assert!(encoded_len(headers) < HEADERS_BUDGET_BYTES, "{reason}");
        let first = header_text(headers, "x-first-failed-at").expect("x-first-failed-at");
        let last = header_text(headers, "x-last-failed-at").expect("x-last-failed-at");
        assert!(
            chrono::DateTime::parse_from_rfc3339(&first).is_ok() && first <= last,
            "{first} {last}"
        );
    }

    env.finish(worker).await;
}
