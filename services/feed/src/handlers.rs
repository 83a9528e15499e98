//! gRPC handlers of feed.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use sterling_proto::feed::v1::feed_server::Feed;
use sterling_proto::feed::v1::{FeedItem, FollowFeedRequest, ListFeedRequest, ListFeedResponse};
use sterling_template::error::Error;
use sterling_template::error::required;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::{Request, Response, Status};

use crate::store::FeedStore;

/// Largest page.
pub const MAX_PAGE: usize = 100;

/// The feed gRPC service.
pub struct FeedHandlers {
    /// Items.
    pub feed: FeedStore,
}

#[tonic::async_trait]
impl Feed for FeedHandlers {
    async fn list_feed(
        &self,
        request: Request<ListFeedRequest>,
    ) -> Result<Response<ListFeedResponse>, Status> {
        let r = request.into_inner();
        let limit = match r.limit {
            0 => 20,
            n => (n as usize).min(MAX_PAGE),
        };
        let cursor = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let items = self
            .feed
            .page(required("account_id", &r.account_id)?, limit, cursor)
            .await?;
        let next_page_token = if items.len() == limit {
            items.last().map(|i| i.item_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListFeedResponse {
            items,
            next_page_token,
        }))
    }

    type FollowFeedStream = Pin<Box<dyn Stream<Item = Result<FeedItem, Status>> + Send>>;

    async fn follow_feed(
        &self,
        request: Request<FollowFeedRequest>,
    ) -> Result<Response<Self::FollowFeedStream>, Status> {
        let account_id = required("account_id", &request.into_inner().account_id)?.to_string();
        Ok(Response::new(Box::pin(live(self.feed.follow(&account_id)))))
    }
}

/// One account's live items as a follow stream. A follower that falls more than the channel's
/// buffer behind gets `unavailable.follower_behind` and its stream ends, so the app lists the
/// feed and follows again rather than silently missing items.
fn live(
    receiver: tokio::sync::broadcast::Receiver<FeedItem>,
) -> impl Stream<Item = Result<FeedItem, Status>> {
    BroadcastStream::new(receiver).scan(false, |ended, item| {
        let next = match item {
            _ if *ended => None,
            Ok(item) => Some(Ok(item)),
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                *ended = true;
                let message =
                    format!("this follower missed {missed} items; list the feed and follow again");
                Some(Err(Error::unavailable("follower_behind", message).into()))
            }
        };
        std::future::ready(next)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str) -> FeedItem {
        FeedItem {
            item_id: id.to_string(),
            ..FeedItem::default()
        }
    }

    #[tokio::test]
    async fn a_follower_that_falls_behind_is_told_and_its_stream_ends() {
        let (sender, receiver) = tokio::sync::broadcast::channel(2);
        let follower = live(receiver);
        for id in ["a", "b", "c", "d"] {
            sender.send(item(id)).unwrap();
        }
        drop(sender);
        let heard: Vec<Result<FeedItem, Status>> = follower.collect().await;
        // Two of four missed: told once, and nothing after (not "c" and "d" as if whole).
        assert_eq!(heard.len(), 1, "{heard:?}");
        let status = heard[0].as_ref().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("missed 2 items"), "{status:?}");
    }

    #[tokio::test]
    async fn a_follower_that_keeps_up_hears_every_item_in_order() {
        let (sender, receiver) = tokio::sync::broadcast::channel(2);
        let follower = live(receiver);
        let sending = tokio::spawn(async move {
            for id in ["a", "b", "c", "d"] {
                sender.send(item(id)).unwrap();
                tokio::task::yield_now().await;
            }
        });
        let heard: Vec<String> = follower.map(|i| i.unwrap().item_id).collect().await;
        sending.await.unwrap();
        assert_eq!(heard, ["a", "b", "c", "d"]);
    }
}
