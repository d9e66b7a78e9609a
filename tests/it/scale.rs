//! Many orders, many workers: three worker processes share AWS's limit of five creations in
//! progress per organization through the broker, and a killed worker's slots come back. The
//! fault proxy keeps each creation IN_PROGRESS for a while and reports what overlapped. The
//! slots, the order locks and the exclusive-queue lease under both are tried on the broker
//! between two connections.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_account_worker::broker::lease::Leases;
use aws_account_worker::broker::locks::BrokerLocks;
use aws_account_worker::broker::slots::{BrokerSlots, Limits};
use aws_account_worker::locks::OrderLocks;
use aws_account_worker::observability::Metrics;
use aws_account_worker::slots::{CreationSlots, NoSlot, Slot};
use serde_json::Value;
use tokio::time::Instant;

use crate::faults::{Creation, End, FaultProxy, Faults, max_overlap};
use crate::support::{
    DEADLINE, Payer, TestEnv, WorkerProcess, assert_one_account_per_order, collect, moto_config,
    moto_fast_endpoint, root_order, write_config,
};

/// Quick retries and polls, so that the tests do not wait for production delays.
const QUICK: &str = r#"
[retry]
initial_delay_ms = 100
max_delay_ms = 1000
max_attempts = 20
redelivered_create_delay_ms = 5000

[aws]
create_status_poll_ms = 100
creation_slot_poll_ms = 50
"#;

/// A test environment in the fast moto, reached through a proxy whose creations take
/// `creation` each.
async fn with_creations_taking(creation: Duration) -> (TestEnv, FaultProxy) {
    let faults = Faults {
        creation: Creation::Takes {
            duration: creation,
            then: End::Succeeded,
        },
        ..Faults::default()
    };
    let proxy = FaultProxy::start(&moto_fast_endpoint(), faults).await;
    let payer = Payer::on(&moto_fast_endpoint()).await;
    let aws = moto_config(&proxy.endpoint, payer.credentials.clone());
    let env = TestEnv::with_aws(QUICK, payer, aws).await;
    (env, proxy)
}

fn request_id(order: &Value) -> String {
    order["id"].as_str().expect("request id").to_owned()
}

/// Collects provisioned events until every one of `ids` has one.
async fn events_for(
    env: &mut TestEnv,
    ids: &[String],
    workers: &[&WorkerProcess],
) -> BTreeMap<String, Vec<Value>> {
    let mut events = BTreeMap::new();
    while ids.iter().any(|id| !events.contains_key(id)) {
        let Some(event) = env.next_event_within(DEADLINE).await else {
            let logs: Vec<String> = workers.iter().map(|w| w.log_tail()).collect();
            panic!(
                "{} of {} orders provisioned; the workers' logs:\n{}",
                events.len(),
                ids.len(),
                logs.join("\n-----\n")
            );
        };
        collect(&mut events, event);
    }
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn three_workers_on_150_orders_never_have_more_than_five_creations_in_progress() {
    let (mut env, proxy) = with_creations_taking(Duration::from_millis(300)).await;
    let config = write_config(&env.toml);
    let orders: Vec<Value> = (0..150).map(|_| root_order()).collect();
    for order in &orders {
        env.publish_json(order).await;
    }
    let ids: Vec<String> = orders.iter().map(request_id).collect();
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(WorkerProcess::spawn(&env, &config, &proxy.endpoint).await);
    }

    let events = events_for(&mut env, &ids, &workers.iter().collect::<Vec<_>>()).await;

    let stats = proxy.stats();
    eprintln!("150 orders, 3 workers, proxy: {stats:?}");
    assert_eq!(events.len(), 150);
    let duplicated: Vec<_> = events.iter().filter(|(_, e)| e.len() > 1).collect();
    assert!(duplicated.is_empty(), "one event per order: {duplicated:?}");
    assert_one_account_per_order(&env, &events).await;
    assert_eq!(stats.creations, 150, "one CreateAccount per order");
    assert_eq!(
        stats.max_in_progress, 5,
        "the five slots were used, and never more"
    );
    assert!(env.drain_dlq().await.is_empty(), "nothing dead-lettered");
    for worker in &workers {
        worker.signal("TERM");
    }
    for worker in &mut workers {
        assert_eq!(worker.exit(Duration::from_secs(40)).await, Some(0));
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_slots_come_back_to_the_others() {
    let (mut env, proxy) = with_creations_taking(Duration::from_secs(2)).await;
    let config = write_config(&env.toml);
    let first: Vec<Value> = (0..5).map(|_| root_order()).collect();
    for order in &first {
        env.publish_json(order).await;
    }
    let mut holder = WorkerProcess::spawn(&env, &config, &proxy.endpoint).await;
    let deadline = Instant::now() + DEADLINE;
    while proxy.stats().creations < 5 {
        assert!(
            Instant::now() < deadline,
            "the worker never took the five slots: {}",
            holder.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It holds all five slots while AWS creates: kill it.
    holder.signal("KILL");
    holder.exit(Duration::from_secs(10)).await;
    let killed = Instant::now();
    while proxy.in_progress() > 0 {
        assert!(Instant::now() < deadline, "the creations never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another worker gets the five slots for new orders (and finishes the killed one's).
    let second: Vec<Value> = (0..5).map(|_| root_order()).collect();
    for order in &second {
        env.publish_json(order).await;
    }
    let other = WorkerProcess::spawn(&env, &config, &proxy.endpoint).await;
    let ids: Vec<String> = first.iter().chain(&second).map(request_id).collect();
    let events = events_for(&mut env, &ids, &[&other]).await;

    assert_one_account_per_order(&env, &events).await;
    let after: Vec<_> = proxy
        .spans()
        .into_iter()
        .filter(|s| s.start > killed)
        .collect();
    assert_eq!(after.len(), 5, "the new orders' creations, no other");
    assert_eq!(
        max_overlap(&after),
        5,
        "the other worker had all five slots at once"
    );
    env.cleanup().await;
}

/// A connection to the test broker.
async fn connect() -> std::sync::Arc<lapin::Connection> {
    connect_to(&crate::support::amqp_url()).await
}

async fn connect_to(url: &str) -> std::sync::Arc<lapin::Connection> {
    std::sync::Arc::new(
        lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .expect("broker"),
    )
}

fn url() -> secrecy::SecretString {
    crate::support::amqp_url().into()
}

/// A connection that only holds leases asks for 8 KiB frames, so lapin's two frame buffers
/// take 256 KiB each instead of 4 MiB; the orders connection keeps the broker's frame size.
#[tokio::test(flavor = "multi_thread")]
async fn lease_connections_ask_for_small_frames() {
    use aws_account_worker::broker::{self, LEASE_FRAME_MAX, Use};
    let leases = broker::connect_for(&url(), Use::Leases)
        .await
        .expect("broker");
    assert_eq!(leases.configuration().frame_max(), LEASE_FRAME_MAX);
    let messages = broker::connect(&url()).await.expect("broker");
    assert!(
        messages.configuration().frame_max() > LEASE_FRAME_MAX,
        "{}",
        messages.configuration().frame_max()
    );
    // A lease on the small-frame connection is taken and given back as on any other.
    let connection = std::sync::Arc::new(leases);
    let lease = Leases::on(&connection)
        .try_take(&format!("test-frames.{}", crate::support::digits(10)))
        .await
        .expect("declare")
        .expect("free");
    lease.give_back().await;
    let _ = connection.close(200, "done".into()).await;
    let _ = messages.close(200, "done".into()).await;
}

/// lapin never frees the channel id of a refused declare: a waiter whose connection allows only
/// 16 channels is refused far more often than that while another connection holds the slot, and
/// still gets the slot once it comes back (its task moved to a new connection on the way).
#[tokio::test(flavor = "multi_thread")]
async fn refused_tries_do_not_use_up_the_connection() {
    let prefix = format!("test-slots.{}", crate::support::digits(10));
    let small = format!("{}?channel_max=16", crate::support::amqp_url());
    let holder = BrokerSlots::new(&connect().await, &url(), &prefix, limits(1, 8, DEADLINE));
    let narrow = connect_to(&small).await;
    assert_eq!(narrow.configuration().channel_max(), 16);
    let waiter = BrokerSlots::new(&narrow, &small.into(), &prefix, limits(1, 8, DEADLINE));

    let held = holder.acquire("p").await.expect("the slot");
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.acquire("p").await }
    });
    // Polling every 20 ms, 1.5 s is about 75 refused tries: more than the 16 channels.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "the slot is held");
    drop(held);
    slot_within(
        DEADLINE,
        waiting,
        "the slot reaches the waiter after many refusals",
    )
    .await;
}

fn limits(slots: usize, max_waiting: usize, max_wait: Duration) -> Limits {
    Limits {
        slots,
        poll: Duration::from_millis(20),
        max_waiting,
        max_wait,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slots_are_shared_between_connections_and_come_back_when_one_closes() {
    let prefix = format!("test-slots.{}", crate::support::digits(10));
    let (one, two) = (connect().await, connect().await);
    let url = url();
    let first = BrokerSlots::new(&one, &url, &prefix, limits(2, 8, DEADLINE));
    let second = BrokerSlots::new(&two, &url, &prefix, limits(2, 8, DEADLINE));

    let a = first.acquire("p").await.expect("first slot");
    let _b = first.acquire("p").await.expect("second slot");
    let waiting = tokio::spawn({
        let second = second.clone();
        async move { second.acquire("p").await }
    });
    // Another payer has slots of its own.
    let _other = second.acquire("q").await.expect("another payer's slot");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "both slots of p are held");

    drop(a);
    let c = slot_within(
        DEADLINE,
        waiting,
        "a slot given back reaches the other connection",
    )
    .await;

    // The first connection closes (as when its process dies): its slot comes back.
    let again = tokio::spawn({
        let second = second.clone();
        async move { second.acquire("p").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!again.is_finished(), "one slot each");
    one.close(200, "gone".into()).await.expect("close");
    slot_within(DEADLINE, again, "the closed connection's slot comes back").await;
    drop(c);
    let _ = two.close(200, "done".into()).await;
}

/// The slot `waiting` gets within `limit`; fails the test with `what` if none comes.
async fn slot_within(
    limit: Duration,
    waiting: tokio::task::JoinHandle<Result<Slot, NoSlot>>,
    what: &str,
) -> Slot {
    tokio::time::timeout(limit, waiting)
        .await
        .expect(what)
        .expect("task")
        .expect("slot")
}

/// Returns once an order of payer `p` waits for a slot (the waiting room of one is full).
async fn until_one_waits(slots: &BrokerSlots) {
    let deadline = Instant::now() + DEADLINE;
    while slots.room_to_wait("p").is_ok() {
        assert!(
            Instant::now() < deadline,
            "the waiter never started waiting"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for a slot of payer `p` in a place told through the returned receiver once the order
/// is one of the next to be served.
fn wait_told(
    slots: &BrokerSlots,
) -> (
    tokio::task::JoinHandle<Result<Slot, NoSlot>>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let (tell, told) = tokio::sync::oneshot::channel();
    let room = slots.room_to_wait("p").expect("room").telling_next(tell);
    let slots = slots.clone();
    (
        tokio::spawn(async move { slots.acquire_in("p", room).await }),
        told,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn only_as_many_waiters_as_there_are_slots_are_told_they_are_next() {
    let prefix = format!("test-slots.{}", crate::support::digits(10));
    let connection = connect().await;
    let slots = BrokerSlots::new(&connection, &url(), &prefix, limits(2, 8, DEADLINE));
    let first = slots.acquire("p").await.expect("first slot");
    let _second = slots.acquire("p").await.expect("second slot");

    // Two slots: the two oldest waiters are told, in turn; the third is not.
    let (one, told_one) = wait_told(&slots);
    tokio::time::timeout(DEADLINE, told_one)
        .await
        .expect("the oldest waiter is told")
        .expect("told, not dropped");
    let (_two, told_two) = wait_told(&slots);
    tokio::time::timeout(DEADLINE, told_two)
        .await
        .expect("the second waiter is told")
        .expect("told, not dropped");
    let (_three, mut told_three) = wait_told(&slots);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        told_three.try_recv(),
        Err(tokio::sync::oneshot::error::TryRecvError::Empty),
        "a third waiter of two slots is not next"
    );

    // A slot comes back: the oldest waiter gets it, and the third is now next.
    drop(first);
    slot_within(DEADLINE, one, "the oldest waiter gets the slot").await;
    tokio::time::timeout(DEADLINE, told_three)
        .await
        .expect("the third waiter is told once it is next")
        .expect("told, not dropped");
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_for_a_slot_is_bounded_in_number_and_time() {
    let prefix = format!("test-slots.{}", crate::support::digits(10));
    let connection = connect().await;
    let slots = BrokerSlots::new(
        &connection,
        &url(),
        &prefix,
        // Long enough for a free slot to be taken on a loaded machine (300 ms was not, in CI).
        limits(1, 1, Duration::from_millis(2000)),
    );
    let held = slots.acquire("p").await.expect("the slot");
    let waiting = tokio::spawn({
        let slots = slots.clone();
        async move { slots.acquire("p").await }
    });
    until_one_waits(&slots).await;
    assert_eq!(
        slots.acquire("p").await.err(),
        Some(NoSlot::TooManyWaiting(1)),
        "one waiter at most"
    );
    let timed_out = waiting.await.expect("task");
    assert_eq!(
        timed_out.err(),
        Some(NoSlot::TimedOut(Duration::from_millis(2000)))
    );

    // Given back, it reaches the next waiter at its next look.
    let next = tokio::spawn({
        let slots = slots.clone();
        async move { slots.acquire("p").await }
    });
    until_one_waits(&slots).await;
    drop(held);
    slot_within(Duration::from_secs(5), next, "taken by the next waiter").await;
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_is_held_by_one_connection_and_comes_back_when_it_closes() {
    let queue = format!("test-lease.{}", crate::support::digits(10));
    let (one, two) = (connect().await, connect().await);
    let (first, second) = (Leases::on(&one), Leases::on(&two));

    let held = first.try_take(&queue).await.expect("broker");
    assert!(held.is_some(), "a free queue is taken");
    assert!(
        second.try_take(&queue).await.expect("broker").is_none(),
        "another connection holds it"
    );
    held.expect("held").give_back().await;
    let taken = second.try_take(&queue).await.expect("broker");
    assert!(taken.is_some(), "given back, it is free");
    assert!(first.try_take(&queue).await.expect("broker").is_none());

    // The holder's connection closes (as when its process dies): the lease comes back.
    two.close(200, "gone".into()).await.expect("close");
    assert!(
        first.try_take(&queue).await.expect("broker").is_some(),
        "the closed connection's lease came back"
    );
    drop(taken);
    let _ = one.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_lock_is_held_once_across_workers_until_released() {
    let prefix = format!("test-locks.{}", crate::support::digits(10));
    let (one, two) = (connect().await, connect().await);
    let metrics = Metrics::default();
    let first = BrokerLocks::new(&one, &url(), &prefix, &metrics);
    let second = BrokerLocks::new(&two, &url(), &prefix, &metrics);

    let lock = first.try_take("a@example.com").await.expect("broker");
    assert!(lock.is_some(), "a free key is taken");
    assert!(
        first
            .try_take("a@example.com")
            .await
            .expect("broker")
            .is_none(),
        "another delivery of this process holds it"
    );
    assert!(
        second
            .try_take("a@example.com")
            .await
            .expect("broker")
            .is_none(),
        "another worker holds it"
    );
    let other = second.try_take("b@example.com").await.expect("broker");
    assert!(other.is_some(), "another key is free");

    lock.expect("held").release().await;
    let again = second.try_take("a@example.com").await.expect("broker");
    assert!(again.is_some(), "released, it is free for the other worker");
    again.expect("held").release().await;
    other.expect("held").release().await;
    let _ = one.close(200, "done".into()).await;
    let _ = two.close(200, "done".into()).await;
}

/// A refused take costs a channel id for good in lapin: a worker whose order locks are refused
/// 3,000 times (more than the 2,047 channels of a connection) still takes a free key, and its
/// connection still opens channels.
#[tokio::test(flavor = "multi_thread")]
async fn many_refused_locks_keep_the_connection_usable() {
    let prefix = format!("test-locks.{}", crate::support::digits(10));
    let (one, two) = (connect().await, connect().await);
    let metrics = Metrics::default();
    let holder = BrokerLocks::new(&one, &url(), &prefix, &metrics);
    let worker = BrokerLocks::new(&two, &url(), &prefix, &metrics);

    let held = holder
        .try_take("a@example.com")
        .await
        .expect("broker")
        .expect("a free key");
    for _ in 0..3000 {
        let refused = worker.try_take("a@example.com").await.expect("broker");
        assert!(refused.is_none(), "the other worker holds it");
    }
    let free = worker.try_take("b@example.com").await.expect("broker");
    assert!(
        free.is_some(),
        "a free key is still taken after many refusals"
    );
    for _ in 0..10 {
        let channel = two
            .create_channel()
            .await
            .expect("the connection opens channels");
        channel.close(200, "done".into()).await.expect("close");
    }
    free.expect("held").release().await;
    held.release().await;
    assert!(
        worker
            .try_take("a@example.com")
            .await
            .expect("broker")
            .is_some(),
        "released, the key reaches the refused worker"
    );
    let _ = one.close(200, "done".into()).await;
    let _ = two.close(200, "done".into()).await;
}
