use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// A response body type that a rejection can be written into.
///
/// The middleware in this crate answer in the inner service's own body type, so that
/// nothing is boxed or wrapped on the way through. It is implemented for axum's and
/// tonic's bodies (with their features), for `String`, and for [`ResponseBody<B>`],
/// which wraps *any* body: for an inner service with another body type, map its
/// responses with [`ResponseBody::new`] (for example with tower-http's
/// `MapResponseBodyLayer::new(ResponseBody::new)`).
pub trait RejectionBody {
    /// A body holding exactly `bytes`.
    fn from_rejection(bytes: Bytes) -> Self;
}

impl<B> RejectionBody for ResponseBody<B> {
    fn from_rejection(bytes: Bytes) -> Self {
        Self::full(bytes)
    }
}

impl RejectionBody for String {
    fn from_rejection(bytes: Bytes) -> Self {
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(feature = "axum")]
impl RejectionBody for axum::body::Body {
    fn from_rejection(bytes: Bytes) -> Self {
        axum::body::Body::from(bytes)
    }
}

#[cfg(feature = "tonic")]
impl RejectionBody for tonic::body::Body {
    fn from_rejection(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            tonic::body::Body::empty()
        } else {
            tonic::body::Body::new(ResponseBody::<String>::full(bytes))
        }
    }
}

pin_project! {
    /// A body that is either another body, passed through untouched, or a complete
    /// rejection: the [`RejectionBody`] for inner services whose own body type has none.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps another body.
    pub fn new(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("ResponseBody::Inner"),
            Kind::Full { data } => f
                .debug_struct("ResponseBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Full { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(B::Data::from(d)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect<B: Body<Data = Bytes>>(body: B) -> Vec<u8>
    where
        B::Error: std::fmt::Debug,
    {
        let mut body = std::pin::pin!(body);
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            out.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        out
    }

    #[tokio::test]
    async fn full_and_wrapped_bodies() {
        let full = ResponseBody::<String>::from_rejection(Bytes::from_static(b"{}"));
        assert_eq!(full.size_hint().exact(), Some(2));
        assert!(!full.is_end_stream());
        assert_eq!(collect(full).await, b"{}");
        let empty = ResponseBody::<String>::from_rejection(Bytes::new());
        assert!(empty.is_end_stream());
        let wrapped = ResponseBody::new(String::from("inner"));
        assert_eq!(wrapped.size_hint().exact(), Some(5));
        assert_eq!(collect(wrapped).await, b"inner");
        assert_eq!(String::from_rejection(Bytes::from_static(b"x")), "x");
    }
}
