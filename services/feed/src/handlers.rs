//! gRPC handlers of feed.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use sterling_proto::feed::v1::feed_server::Feed;
use sterling_proto::feed::v1::{FeedItem, FollowFeedRequest, ListFeedRequest, ListFeedResponse};
use sterling_template::error::required;
use tokio_stream::wrappers::BroadcastStream;
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
        let stream = BroadcastStream::new(self.feed.follow(&account_id)).filter_map(|item| {
            // A follower that fell more than the buffer behind misses those items; the app
            // lists the feed again when it reconnects.
            std::future::ready(item.ok().map(Ok))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
