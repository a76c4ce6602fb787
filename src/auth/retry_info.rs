//! The `grpc-status-details-bin` of a gRPC refusal that may be retried: a
//! `google.rpc.Status` carrying one `google.rpc.RetryInfo` (the delay of the
//! `retry-after` metadata), which gRPC clients read with their error-details helpers
//! (`tonic-types`, grpc-go's `status.Details()`, Google's API clients).
//!
//! Four small messages, encoded by hand so that the core needs no protobuf crate:
//!
//! ```text
//! google.rpc.Status        { int32 code = 1; string message = 2; repeated Any details = 3; }
//! google.protobuf.Any      { string type_url = 1; bytes value = 2; }
//! google.rpc.RetryInfo     { google.protobuf.Duration retry_delay = 1; }
//! google.protobuf.Duration { int64 seconds = 1; int32 nanos = 2; }
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use http::HeaderValue;

const RETRY_INFO_TYPE: &[u8] = b"type.googleapis.com/google.rpc.RetryInfo";

/// The header value: base64 (unpadded, as gRPC writes binary metadata) of a
/// `google.rpc.Status` with `code`, `message` and a `RetryInfo` of `seconds`.
pub(crate) fn status_details(code: i32, message: &str, seconds: u64) -> HeaderValue {
    let mut duration = Vec::with_capacity(11);
    varint_field(&mut duration, 1, seconds);
    let mut retry_info = Vec::with_capacity(13);
    bytes_field(&mut retry_info, 1, &duration);
    let mut any = Vec::with_capacity(64);
    bytes_field(&mut any, 1, RETRY_INFO_TYPE);
    bytes_field(&mut any, 2, &retry_info);
    let mut status = Vec::with_capacity(any.len() + message.len() + 16);
    // An int32 is written as its sign-extended 64-bit value.
    varint_field(&mut status, 1, i64::from(code) as u64);
    bytes_field(&mut status, 2, message.as_bytes());
    bytes_field(&mut status, 3, &any);
    HeaderValue::try_from(STANDARD_NO_PAD.encode(status)).expect("base64 is a valid header value")
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A varint field; proto3 leaves out zeros.
fn varint_field(out: &mut Vec<u8>, number: u64, value: u64) {
    if value != 0 {
        varint(out, number << 3);
        varint(out, value);
    }
}

/// A length-delimited field.
fn bytes_field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    if !bytes.is_empty() {
        varint(out, (number << 3) | 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    // The messages as prost declares them: the decoder is prost's, not ours.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Status {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
        #[prost(message, repeated, tag = "3")]
        details: Vec<Any>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Any {
        #[prost(string, tag = "1")]
        type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct RetryInfo {
        #[prost(message, optional, tag = "1")]
        retry_delay: Option<Duration>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Duration {
        #[prost(int64, tag = "1")]
        seconds: i64,
        #[prost(int32, tag = "2")]
        nanos: i32,
    }

    fn decode(value: &HeaderValue) -> (Status, RetryInfo) {
        let bytes = STANDARD_NO_PAD.decode(value.as_bytes()).unwrap();
        let status = Status::decode(&bytes[..]).unwrap();
        assert_eq!(status.details.len(), 1);
        let any = &status.details[0];
        assert_eq!(any.type_url, "type.googleapis.com/google.rpc.RetryInfo");
        let info = RetryInfo::decode(&any.value[..]).unwrap();
        (status, info)
    }

    #[test]
    fn prost_reads_the_status_and_its_retry_info() {
        for (code, message, seconds) in [
            (8, "rate limit spent; retry in 12 s", 12u64),
            (14, "The key store is unavailable.", 5),
            (8, "", 1),
            (8, "ünïcode and a long message ".repeat(20).as_str(), 300),
            (14, "x", u64::from(u32::MAX) + 7),
        ] {
            let (status, info) = decode(&status_details(code, message, seconds));
            assert_eq!(status.code, code);
            assert_eq!(status.message, message);
            let delay = info.retry_delay.unwrap();
            assert_eq!(delay.seconds as u64, seconds);
            assert_eq!(delay.nanos, 0);
        }
    }
}
