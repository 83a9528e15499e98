//! An account's feed in the public API: a page at a time, and live as Server-Sent Events
//! (`event: feed_item`, the item as JSON in `data`, its id in `id`). An item is sent again
//! when it changes (enrichment, a decline reason), so a client keys items by `item_id`. A
//! client that reconnects lists the feed again: the stream carries what happens from now.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use sterling_proto::feed::v1::{FeedItem, FollowFeedRequest, ListFeedRequest};
use sterling_template::Error;
use sterling_template::server::Problem;

use crate::activity::{Page, page_of};
use crate::handlers::{AccountsState, Caller, customer, money_json};

type Shared = State<Arc<AccountsState>>;

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn item_json(item: FeedItem) -> Value {
    json!({
        "item_id": item.item_id,
        "title": item.title,
        "subtitle": item.subtitle,
        "amount": money_json(item.amount),
        "local_amount": money_json(item.local_amount),
        "status": item.status,
        "kind": if item.kind.is_empty() { "card_payment".to_string() } else { item.kind },
        "declined_reason": item.declined_reason,
        "category": item.category,
        "logo_url": item.logo_url,
        "created_at_ms": item.created_at_ms,
        "updated_at_ms": item.updated_at_ms,
    })
}

/// `GET /v1/accounts/{id}/feed?limit=&cursor=`: newest first; `next_cursor` is empty on the
/// last page.
pub async fn list(
    State(state): Shared,
    caller: Caller,
    Path(account_id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, Problem> {
    let account = state
        .accounts
        .owned(customer(&caller)?, &account_id)
        .await?;
    let (limit, cursor) = page_of(page)?;
    let listed = state
        .feed
        .clone()
        .list_feed(ListFeedRequest {
            account_id: account.account_id,
            limit,
            page_token: cursor,
        })
        .await
        .map_err(Error::from)?
        .into_inner();
    let items: Vec<Value> = listed.items.into_iter().map(item_json).collect();
    Ok(Json(json!({
        "items": items,
        "next_cursor": listed.next_page_token,
    })))
}

/// `GET /v1/accounts/{id}/feed/stream`: `text/event-stream` of the account's items as they
/// arrive and change; a comment every 15 s keeps it open. Ends when the feed service goes.
pub async fn stream(
    State(state): Shared,
    caller: Caller,
    Path(account_id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let account = state
        .accounts
        .owned(customer(&caller)?, &account_id)
        .await?;
    let items = state
        .feed
        .clone()
        .follow_feed(FollowFeedRequest {
            account_id: account.account_id,
        })
        .await
        .map_err(Error::from)?
        .into_inner();
    let events = items
        .take_while(|item| std::future::ready(item.is_ok()))
        .filter_map(|item| async move {
            let item = item.ok()?;
            let id = item.item_id.clone();
            let event = Event::default()
                .event("feed_item")
                .id(id)
                .json_data(item_json(item))
                .ok()?;
            Some(Ok(event))
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
