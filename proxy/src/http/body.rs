//! The body type the HTTP proxy passes around, and a wrapper that counts bytes and runs a final
//! step when the body is done or dropped (that is when a request's access-log line is written).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, SizeHint};

/// Errors of any body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed body: requests and responses of every origin travel as this.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body.
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Counts the data bytes of a body into a shared counter, and calls `on_end` once, when the
/// body has ended or is dropped (whichever comes first).
pub struct Counted<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
    on_end: Option<Box<dyn FnOnce() + Send>>,
}

impl<B> std::fmt::Debug for Counted<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted")
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<B> Counted<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, bytes: Arc<AtomicU64>, on_end: Option<Box<dyn FnOnce() + Send>>) -> Self {
        Self {
            inner,
            bytes,
            on_end,
        }
    }

    fn end(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end();
        }
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.end();
    }
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes
                        .fetch_add(bytes::Buf::remaining(data) as u64, Ordering::Relaxed);
                }
                if self.inner.is_end_stream() {
                    self.end();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.end(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use std::sync::atomic::AtomicBool;

    #[tokio::test]
    async fn counts_and_ends_once() {
        let bytes = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(AtomicBool::new(false));
        let flag = ended.clone();
        let body = Counted::new(
            Full::new(Bytes::from_static(b"hello")),
            bytes.clone(),
            Some(Box::new(move || {
                assert!(!flag.swap(true, Ordering::SeqCst), "ended twice");
            })),
        );
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello");
        assert_eq!(bytes.load(Ordering::Relaxed), 5);
        assert!(ended.load(Ordering::SeqCst));
    }

    #[test]
    fn a_dropped_body_still_ends() {
        let ended = Arc::new(AtomicBool::new(false));
        let flag = ended.clone();
        drop(Counted::new(
            Full::new(Bytes::new()),
            Arc::default(),
            Some(Box::new(move || flag.store(true, Ordering::SeqCst))),
        ));
        assert!(ended.load(Ordering::SeqCst));
    }
}
