use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::Report;

pub(crate) type BoxFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

pin_project! {
    /// Response future of [`ApiKeyService`](crate::ApiKeyService) and
    /// [`RequireScopeService`](crate::RequireScopeService).
    ///
    /// `F` is the inner service's future, `B` its response body and `E` its error.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
        // The request's span, entered while the inner service runs, and its count.
        report: Report,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        // The key was found in the cache: the inner service is already running.
        Inner { #[pin] future: F },
        // A cache miss: resolving the key, then calling the inner service.
        Resolving { future: BoxFuture<B, E> },
        // Refused before reaching the inner service.
        Rejected { response: Option<Response<B>> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn inner(future: F) -> Self {
        Self::reporting(future, Report::NONE)
    }

    /// The inner service is running; `report` reports the request once it has answered.
    /// (Built in one go: setting the report on a built future would move the whole
    /// future, the inner one inside it, once more.)
    pub(crate) fn reporting(future: F, report: Report) -> Self {
        Self {
            kind: Kind::Inner { future },
            report,
        }
    }

    pub(crate) fn resolving(future: BoxFuture<B, E>) -> Self {
        Self {
            kind: Kind::Resolving { future },
            report: Report::NONE,
        }
    }

    pub(crate) fn rejected(response: Response<B>) -> Self {
        Self {
            kind: Kind::Rejected {
                response: Some(response),
            },
            report: Report::NONE,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Inner { future } => {
                let output = {
                    let _entered = this.report.span().enter();
                    ready!(future.poll(cx))
                };
                this.report.finish_with(&output);
                Poll::Ready(output)
            }
            KindProj::Resolving { future } => future.as_mut().poll(cx),
            KindProj::Rejected { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}
