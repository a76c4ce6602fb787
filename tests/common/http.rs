//! Calling an axum `Router` in tests: the response's head and its body as text.
#![allow(dead_code)] // each test crate uses part of it

use axum::Router;
use axum::body::Body;
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Sends `req` through a clone of `router`; returns the head and the body as text.
pub(crate) async fn call(router: &Router, req: Request<Body>) -> (Response<()>, String) {
    let response = router.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        Response::from_parts(parts, ()),
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// A header that must be there, as text.
pub(crate) fn header<'a>(r: &'a Response<()>, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}
