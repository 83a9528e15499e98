//! Dead letters an operator can act on: a consumer that refuses an event dead-letters it;
//! `sterling dead-letters list|show|replay` (the binary, as a person runs it) finds it, says
//! why, and hands it to that consumer alone, which then handles it; a replay asked twice is
//! made once; the operator's gRPC for it is refused to any other caller.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{eventually, money, start};
use sterling_proto::feed::v1::ListFeedRequest;
use sterling_proto::feed::v1::feed_client::FeedClient;
use sterling_proto::operator::v1::ListDeadLettersRequest;
use sterling_proto::operator::v1::dead_letters_client::DeadLettersClient;
use sterling_template::client::GrpcChannel;

/// `sterling --data <data> args...`, off the runtime's threads.
async fn sterling(data: &Path, args: &[&str]) -> (bool, String) {
    let (data, args) = (
        data.to_path_buf(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::sterling_cli(&data, &args)
    })
    .await
    .unwrap()
}

/// The event ids `sterling dead-letters list` prints for the consumer `feed`.
async fn listed(data: &Path, args: &[&str]) -> Vec<String> {
    let (ok, text) = sterling(data, &[&["dead-letters", "list"], args].concat()).await;
    assert!(ok, "{text}");
    text.lines()
        .filter(|line| line.starts_with("feed/feed "))
        .filter_map(|line| line.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_is_listed_replayed_to_its_consumer_and_handled() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let bank = start(data, &[]).await;
    let customer = bank.seed("dead-letters", money("50.00", "GBP")).await;
    let feed = FeedClient::new(bank.operator_channel("feed").await);
    let items = |feed: &FeedClient<GrpcChannel>| {
        let request = ListFeedRequest {
            account_id: customer.account_id.clone(),
            limit: 10,
            page_token: String::new(),
        };
        let mut feed = feed.clone();
        async move { feed.list_feed(request).await.unwrap().into_inner().items }
    };

    // The feed refuses every event: they are dead-lettered at once, and nothing is shown.
    fail::cfg("consumer::feed", "return(reject)").unwrap();
    let paid = bank
        .pay("dead-letters-1", &customer.card.token, money("4.20", "GBP"))
        .await;
    assert_eq!(paid.body["result"], "APPROVED", "{}", paid.body);
    eventually(
        Duration::from_secs(20),
        "the feed gives up on the approval",
        || async { !listed(data, &[]).await.is_empty() },
    )
    .await;
    fail::remove("consumer::feed");
    assert!(items(&feed).await.is_empty());
    let (ok, text) = sterling(data, &["dead-letters", "list", "--consumer", "feed"]).await;
    assert!(ok, "{text}");
    assert!(text.contains("card.authorisation.approved"), "{text}");
    assert!(text.contains("bad_request.fail_point"), "says why: {text}");
    assert!(text.contains("outstanding"), "{text}");
    let (ok, text) = sterling(data, &["dead-letters", "list", "--consumer", "push"]).await;
    assert!(ok && text.contains("no outstanding dead letters"), "{text}");

    // Shown, then replayed: the feed handles it this time; asked again, nothing new.
    let dead = listed(data, &[]).await;
    let (ok, text) = sterling(data, &["dead-letters", "show", "feed", &dead[0]]).await;
    assert!(ok, "{text}");
    assert!(
        text.contains("after 1 deliveries: bad_request.fail_point"),
        "{text}"
    );
    assert!(text.contains("status      outstanding"), "{text}");
    for event_id in &dead {
        let (ok, text) = sterling(data, &["dead-letters", "replay", "feed", event_id]).await;
        assert!(ok && text.contains("round 1"), "{text}");
    }
    let (ok, text) = sterling(data, &["dead-letters", "replay", "feed", &dead[0]]).await;
    assert!(ok && text.contains("already"), "{text}");
    eventually(
        Duration::from_secs(20),
        "the replayed approval shows",
        || async { items(&feed).await.len() == 1 },
    )
    .await;
    assert!(listed(data, &[]).await.is_empty(), "nothing outstanding");
    assert_eq!(
        listed(data, &["--all"]).await,
        dead,
        "replayed ones listed with --all"
    );
    let (ok, text) = sterling(data, &["dead-letters", "show", "feed", &dead[0]]).await;
    assert!(
        ok && text.contains("replayed    ") && text.contains("by operator"),
        "{text}"
    );

    // Unknown consumers and events are named as such.
    let (ok, text) = sterling(data, &["dead-letters", "replay", "nobody", &dead[0]]).await;
    assert!(
        !ok && text.contains("no running service has a consumer named nobody"),
        "{text}"
    );
    let (ok, text) = sterling(data, &["dead-letters", "show", "feed", "no-such-event"]).await;
    assert!(!ok && text.contains("not_found"), "{text}");

    // Only the operator may call it.
    let refused = DeadLettersClient::new(bank.channel_as("feed", "cards").await)
        .list_dead_letters(ListDeadLettersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    bank.finish().await;
    scenario.teardown();
}
