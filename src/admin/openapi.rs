//! The OpenAPI 3.1 documents of the admin API and the portal, and the convention that
//! keeps them true.
//!
//! `GET /admin/openapi.json` serves [`openapi`], `GET /portal/openapi.json`
//! [`portal_openapi`]. A client generator builds on them, so they must say what the server
//! does: CI runs `schemathesis run … --checks all` against the example server with each
//! (`.ci/schemathesis.sh`: the admin key for one, a `keys:self` key for the other), and
//! the tests at the end of this file check the same rules without Python.
//!
//! # Annotating an endpoint
//!
//! 1. **Register it.** Put `#[utoipa::path(…)]` on the handler (`pub(super)` when it is
//!    not in `mod.rs`) and add the handler to `paths(…)` of [`ApiDoc`] (or [`PortalDoc`]
//!    for `/portal/*`). A test fails for a route of `src/admin/` that neither document has,
//!    and for a documented method the router does not answer.
//! 2. **Errors: a status and a description, no body.** List the success responses with
//!    their `body`, then each error *the handler* answers, as
//!    `(status = 404, description = "No key with this id")`. [`Conventions`] gives every
//!    4xx and 5xx response the `application/problem+json` content with the `Problem`
//!    schema (RFC 9457: `type`, `title`, `status`, `detail`, and `field` for a 422). The
//!    usual ones: 400 the body is not JSON (or not the right JSON type), 413 the body is too
//!    large, 422 a field is wrong (`field` names it), 409 a conflict with what is stored
//!    (the caller's own key, a revoked key), 404 no such key.
//! 3. **Keys: say nothing.** An operation that declares no `security` sits behind the key
//!    layer and the scope check, and [`Conventions`] adds to it the key schemes (`bearer`,
//!    `api_key`) and what they answer: 400 (two different keys), 401 (no key, or a bad,
//!    revoked or expired one; `WWW-Authenticate`), 403 (the scope is missing, or the key
//!    may not be used from this address) and 503 (the key store is unavailable;
//!    `Retry-After`) — which is also what a handler answers when its store call fails. A
//!    route anyone may call declares `security(())`.
//! 4. **Request bodies carry every rule the handler checks.** A type deriving
//!    `Deserialize, ToSchema` with `#[serde(deny_unknown_fields)]` (that is
//!    `additionalProperties: false`). Texts through the schemas here ([`consumer_schema`],
//!    [`scopes_schema`], …: `minLength`, `maxLength`, `pattern`), lists with `maxItems`,
//!    whole numbers as integers with `minimum` and `maximum`. A field the handler treats as
//!    absent when `null` is an `Option` (nullable, not required). The handler checks the
//!    same constants ([`MAX_TEXT`](super::MAX_TEXT), …); the tests here compare them.
//! 5. **Responses say exactly what is sent.** A field that is always sent is required:
//!    `#[schema(required = true)]` on an `Option` that is sent as `null`; one left out when
//!    empty has `skip_serializing_if` and `nullable = false`; times are
//!    `format = DateTime`; a fixed set of words is an `enum`.
//! 6. **Parameters** are `IntoParams` structs, the same that the handler deserializes, with
//!    the bounds it checks (`minimum`, `maximum`); a key id in the path is [`KeyIdPath`].

use serde::Deserialize;
use utoipa::openapi::content::Content;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{
    AdditionalProperties, AllOfBuilder, AnyOfBuilder, ArrayBuilder, KnownFormat, ObjectBuilder,
    Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{Ref, RefOr, Required, Response};
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToSchema};

use super::secret_scanning;
use super::{
    AuditEntryBody, CreatedKeyBody, DeliveryBody, ImportedBody, KeyBody, KeyDetail, MAX_EXPIRES_IN,
    MAX_IMPORT_KEYS, MAX_NETWORKS, MAX_SCOPES, MAX_TEXT, SettingsBody, UsageBody,
};

/// The admin API's OpenAPI 3.1 document, generated from the handlers and body types.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tower-api-key admin API",
        description = "Manage API keys: create, list, change, revoke, delete, rotate, import; usage, audit, webhook deliveries.\n\n\
            Every error is RFC 9457 `application/problem+json`. A key does not revoke, delete or change itself through this API: \
            revoking, deleting or patching the key that makes the request answers 409 (use another admin key, or the `apikey` CLI), \
            and so does rotating it with less than 300 s of grace, so the API always keeps an admin key that works. \
            Revoking (`POST /admin/keys/{id}/revoke`) keeps the key readable: its record, usage and audit log stay, and it changes no more (409). \
            Deleting (`DELETE /admin/keys/{id}`) revokes it and removes it from its URI: every `/admin/keys/{id}…` operation answers 404 from then on, and the list leaves it out; its audit log stays."
    ),
    paths(
        super::create, super::list, super::show, super::update, super::revoke, super::delete,
        super::rotate,
        super::import, super::usage, super::series::key, super::series::all, super::series::top,
        super::audit, super::deliveries, super::settings,
        super::dashboard, super::openapi_json, secret_scanning::report
    ),
    components(schemas(
        CreateKeyRequest, ImportKeyRequest, RateLimitRequest, UpdateKeyRequest, RotateRequest,
        KeyBody, super::LimitBody, KeyDetail, CreatedKeyBody, ImportedBody, UsageBody, super::series::SeriesBody,
        super::series::BucketBody, super::series::TopBody, AuditEntryBody, DeliveryBody,
        SettingsBody, secret_scanning::LeakReportItem, secret_scanning::LeakFeedbackItem
    )),
    modifiers(&Conventions)
)]
pub(super) struct ApiDoc;

/// The portal's OpenAPI 3.1 document (`GET /portal/openapi.json`): the same convention,
/// for keys with the scope `keys:self`.
pub(super) fn portal_openapi() -> utoipa::openapi::OpenApi {
    PortalDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tower-api-key portal API",
        description = "A consumer's self-service, for keys with the scope `keys:self`: list, create, rotate, revoke and delete the keys of the calling key's consumer, and see their usage.\n\n\
            Only the caller's consumer: another consumer's key id answers 404, as an unknown one does. A key made here has no more than the key that made it (else 403 naming the field). \
            A key does not revoke or delete itself, nor rotate itself with less than 300 s of grace (409), and the consumer's last active `keys:self` key is neither revoked nor deleted (409). \
            A revoked key (`POST /portal/keys/{id}/revoke`) stays readable; a deleted one (`DELETE /portal/keys/{id}`) answers 404 from then on, and the list leaves it out. \
            Every error is RFC 9457 `application/problem+json`."
    ),
    paths(
        super::portal::list, super::portal::create, super::portal::show, super::portal::revoke,
        super::portal::delete, super::portal::rotate, super::portal::series, super::portal::page,
        super::portal::openapi_json
    ),
    components(schemas(
        super::portal::OwnKeyRequest, RateLimitRequest, RotateRequest, KeyBody, KeyDetail,
        CreatedKeyBody, super::series::SeriesBody, super::series::BucketBody
    )),
    modifiers(&Conventions)
)]
pub(super) struct PortalDoc;

/// The media type of every error.
pub(super) const PROBLEM_JSON: &str = "application/problem+json";

/// What a key id looks like: `key_` and 22 base62 characters.
pub(super) const KEY_ID_PATTERN: &str = "^key_[0-9A-Za-z]{22}$";

/// A consumer or a name: no control characters, and something besides spaces (as the
/// handler checks: `char::is_control` and `str::trim`, whose spaces are Unicode's
/// `White_Space` characters, the control ones among them excluded here already).
pub(super) const TEXT_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*\
    [^\\u0000-\\u0020\\u007F-\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]\
    [^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// A scope, as [`Scope::new`](crate::Scope::new) takes it: `*`, or letters, digits and
/// `_ . : / -`, with `*` only last and right after a `:`.
pub(super) const SCOPE_PATTERN: &str = "^(\\*|[0-9A-Za-z_.:/-]*:\\*|[0-9A-Za-z_.:/-]+)$";

/// The longest scope, in characters (all ASCII).
pub(super) const MAX_SCOPE_LEN: usize = 128;

/// One network of an allowlist: an IPv4 or IPv6 address, with or without a prefix length
/// (`10.0.0.0/8`, `2001:db8::/32`, `203.0.113.7`). IPv6 written with the usual
/// abbreviations; an embedded IPv4 address only as `::ffff:a.b.c.d` or `::a.b.c.d`.
pub(super) const NETWORK_PATTERN: &str = concat!(
    "^(?:",
    // IPv4, then an optional prefix of 0 to 32.
    "(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
    "(?:/(?:3[0-2]|[12]?[0-9]))?",
    "|",
    // IPv6, then an optional prefix of 0 to 128.
    "(?:",
    "(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}",
    "|(?:[0-9a-fA-F]{1,4}:){1,7}:",
    "|(?:[0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}",
    "|(?:[0-9a-fA-F]{1,4}:){1,5}(?::[0-9a-fA-F]{1,4}){1,2}",
    "|(?:[0-9a-fA-F]{1,4}:){1,4}(?::[0-9a-fA-F]{1,4}){1,3}",
    "|(?:[0-9a-fA-F]{1,4}:){1,3}(?::[0-9a-fA-F]{1,4}){1,4}",
    "|(?:[0-9a-fA-F]{1,4}:){1,2}(?::[0-9a-fA-F]{1,4}){1,5}",
    "|[0-9a-fA-F]{1,4}:(?::[0-9a-fA-F]{1,4}){1,6}",
    "|:(?:(?::[0-9a-fA-F]{1,4}){1,7}|:)",
    "|::(?:ffff:)?(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
    ")",
    "(?:/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))?",
    ")$"
);

/// An RFC 3339 time the server reads (`format: date-time`), from 1971 on (times before
/// 1970 are refused).
pub(super) const TIME_PATTERN: &str = "^(?:197[1-9]|19[89][0-9]|[2-9][0-9]{3})-";

/// A key id in the path: `params(openapi::KeyIdPath)` on an operation with `{id}`.
pub(super) struct KeyIdPath;

impl IntoParams for KeyIdPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("id")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some("The key's id (`key_…`)."))
                .schema(Some(key_id_schema()))
                .build(),
        ]
    }
}

/// A key id: `key_` and 22 base62 characters.
pub(super) fn key_id_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(KEY_ID_PATTERN))
}

/// `POST /admin/keys`.
#[allow(dead_code)] // Documents the body; the handler checks it field by field.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateKeyRequest {
    /// Who the key belongs to.
    #[schema(schema_with = consumer_schema)]
    consumer: String,
    /// A name.
    #[schema(schema_with = name_schema)]
    name: Option<String>,
    /// Scopes such as `orders:read`.
    #[schema(schema_with = scopes_schema)]
    scopes: Option<Vec<String>>,
    /// Seconds until the key expires; without it, the server's default lifetime (if any).
    #[schema(minimum = 1, maximum = 315_360_000)]
    expires_in_seconds: Option<u64>,
    /// The key's rate limit; without one, the service's default applies.
    rate_limit: Option<RateLimitRequest>,
    /// Networks the key may be used from; without them, anywhere.
    #[schema(schema_with = networks_schema)]
    allowed_ips: Option<Vec<String>>,
}

/// A rate limit: `requests` per `per_seconds`, up to `burst` at once.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RateLimitRequest {
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    requests: u64,
    #[schema(minimum = 1, maximum = 31_536_000)]
    per_seconds: u64,
    /// How many requests may come at once (default: `requests`).
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    burst: Option<u64>,
}

/// `PATCH /admin/keys/{id}`: any of `scopes`, `expires_in_seconds` and `allowed_ips`.
#[allow(dead_code)] // Documents the body; the handler checks it field by field.
pub(super) struct UpdateKeyRequest {
    scopes: Option<Vec<String>>,
    expires_in_seconds: Option<Option<u64>>,
    allowed_ips: Option<Vec<String>>,
}

impl PartialSchema for UpdateKeyRequest {
    fn schema() -> RefOr<Schema> {
        let fields = ObjectBuilder::new()
            .property(
                "scopes",
                scopes_schema().description(Some(
                    "The key's scopes from now on (`[]`: none; `null`: unchanged).",
                )),
            )
            .property(
                "expires_in_seconds",
                ObjectBuilder::new()
                    .schema_type(nullable(Type::Integer))
                    .minimum(Some(1))
                    .maximum(Some(MAX_EXPIRES_IN))
                    .description(Some(
                        "Seconds from now until the key expires, or `null`: never.",
                    )),
            )
            .property(
                "allowed_ips",
                networks_schema().description(Some(format!(
                    "The networks the key may be used from from now on: CIDRs such as \
                     `10.0.0.0/8` or `2001:db8::/32`, or single addresses; at most \
                     {MAX_NETWORKS} (`[]`: anywhere; `null`: unchanged)."
                ))),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        // Something to change: an expiry (a number or `null`), or scopes or networks
        // that are a list.
        let list = |field: &str| {
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .required(field)
                .property(field, ObjectBuilder::new().schema_type(Type::Array).build())
        };
        let something = AnyOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::AnyValue)
                    .required("expires_in_seconds"),
            )
            .item(list("scopes"))
            .item(list("allowed_ips"));
        AllOfBuilder::new()
            .item(fields)
            .item(something)
            .description(Some(
                "`PATCH /admin/keys/{id}`: any of `scopes`, `expires_in_seconds` and \
                 `allowed_ips`; all are checked before any is changed.",
            ))
            .into()
    }
}

impl ToSchema for UpdateKeyRequest {}

/// `POST /admin/keys/{id}/rotate`.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateRequest {
    /// Seconds the old key keeps working (0: it stops at once).
    #[schema(minimum = 0, maximum = 2_592_000)]
    grace_seconds: u64,
}

/// One key of `POST /admin/keys/import`: a key minted elsewhere, known by its hash.
#[allow(dead_code)] // Documents the body; ImportedKey::from_json checks it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ImportKeyRequest {
    /// The SHA-256 of the whole key, 64 hex digits. Never the key itself.
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    hash: String,
    /// Who the key belongs to.
    #[schema(schema_with = consumer_schema)]
    consumer: String,
    /// A name.
    #[schema(schema_with = name_schema)]
    name: Option<String>,
    /// Scopes such as `orders:read`.
    #[schema(schema_with = scopes_schema)]
    scopes: Option<Vec<String>>,
    /// When the key stops working, within the server's maximum lifetime; a time past
    /// imports the key as expired.
    #[schema(schema_with = expires_at_schema)]
    expires_at: Option<String>,
    /// The key's rate limit; without one, the service's default applies.
    rate_limit: Option<RateLimitRequest>,
    /// Networks the key may be used from; without them, anywhere.
    #[schema(schema_with = networks_schema)]
    allowed_ips: Option<Vec<String>>,
}

/// The body of `POST /admin/keys/import`: the keys, all imported or none.
pub(super) struct ImportRequest;

impl PartialSchema for ImportRequest {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(Ref::from_schema_name(ImportKeyRequest::name()))
            .max_items(Some(MAX_IMPORT_KEYS))
            .into()
    }
}

impl ToSchema for ImportRequest {}

fn nullable(ty: Type) -> SchemaType {
    SchemaType::from_iter([ty, Type::Null])
}

fn text(ty: SchemaType, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(ty)
        .min_length(Some(1))
        .max_length(Some(MAX_TEXT))
        .pattern(Some(TEXT_PATTERN))
        .description(Some(format!(
            "{description} 1 to {MAX_TEXT} characters, not only spaces, no control characters."
        )))
}

/// `consumer`: required text.
pub(super) fn consumer_schema() -> ObjectBuilder {
    text(Type::String.into(), "Who the key belongs to:")
}

/// `name`: optional text (`null`: none).
pub(super) fn name_schema() -> ObjectBuilder {
    text(nullable(Type::String), "A name:")
}

/// `scopes`: a list of scopes (`null`: none).
pub(super) fn scopes_schema() -> ArrayBuilder {
    ArrayBuilder::new()
        .schema_type(nullable(Type::Array))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_SCOPE_LEN))
                .pattern(Some(SCOPE_PATTERN)),
        )
        .max_items(Some(MAX_SCOPES))
        .description(Some(format!(
            "Scopes such as `orders:read`, `orders:*` or `*`; at most {MAX_SCOPES}."
        )))
}

/// `allowed_ips`: a list of networks (`null`: anywhere).
pub(super) fn networks_schema() -> ArrayBuilder {
    ArrayBuilder::new()
        .schema_type(nullable(Type::Array))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(NETWORK_PATTERN)),
        )
        .max_items(Some(MAX_NETWORKS))
        .description(Some(format!(
            "Networks the key may be used from: CIDRs such as `10.0.0.0/8` or `2001:db8::/32`, \
             or single addresses; at most {MAX_NETWORKS}. Without them, anywhere."
        )))
}

/// `expires_at` of an import: an RFC 3339 time or `null`.
pub(super) fn expires_at_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(nullable(Type::String))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .pattern(Some(TIME_PATTERN))
        .description(Some(
            "When the key stops working (RFC 3339, from 1971), within the server's maximum \
             lifetime; a time past imports the key as expired.",
        ))
}

/// The RFC 9457 problem every error answers with.
fn problem_schema() -> Schema {
    let text = |description: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(description))
    };
    ObjectBuilder::new()
        .description(Some(
            "RFC 9457 problem details. Other members may follow (such as `violated-policies`).",
        ))
        .property(
            "type",
            text("A URI naming the kind of problem (`about:blank`: the status says it)."),
        )
        .required("type")
        .property("title", text("The status's or the problem's short name."))
        .required("title")
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(400))
                .maximum(Some(599)),
        )
        .required("status")
        .property("detail", text("What went wrong, for people."))
        .required("detail")
        .property(
            "field",
            text("The request field at fault (`consumer`, `rate_limit.requests`, `[3].hash`)."),
        )
        .property(
            "errors",
            ArrayBuilder::new()
                .items(
                    ObjectBuilder::new()
                        .property(
                            "row",
                            ObjectBuilder::new()
                                .schema_type(Type::Integer)
                                .minimum(Some(0)),
                        )
                        .required("row")
                        .property("field", text("The member at fault (`[3].hash`)."))
                        .required("field")
                        .property("detail", text("What is wrong with it."))
                        .required("detail"),
                )
                .description(Some(
                    "For an import (422): every bad row, in row order; `field` names the first.",
                )),
        )
        .into()
}

/// Applies the convention of this module to the document: the key schemes, the `Problem`
/// schema, the key layer's answers and security on every operation that declares no
/// `security` of its own, and the problem body on every error response.
pub(super) struct Conventions;

/// An answer of the key layer or the scope check: its status, what it means, and the
/// header that comes with it (name, description).
struct LayerAnswer {
    status: &'static str,
    description: &'static str,
    header: Option<(&'static str, &'static str)>,
}

/// The answers of the key layer and the scope check, which every operation behind them can
/// give.
const KEY_LAYER_ANSWERS: [LayerAnswer; 4] = [
    LayerAnswer {
        status: "400",
        description: "The request carries two different keys (`Authorization` and `X-API-Key`), \
                      or a path that cannot be read (bytes that are not UTF-8).",
        header: None,
    },
    LayerAnswer {
        status: "401",
        description: "No key, or a malformed, unknown, revoked or expired one.",
        header: Some((
            "WWW-Authenticate",
            "`Bearer realm=…`, with `error=\"invalid_token\"` for a bad key (RFC 6750).",
        )),
    },
    LayerAnswer {
        status: "403",
        description: "The key lacks the scope this API needs, or may not be used from this address.",
        header: None,
    },
    LayerAnswer {
        status: "503",
        description: "The key store is unavailable; try again shortly.",
        header: Some(("Retry-After", "Seconds to wait before trying again.")),
    },
];

impl Modify for Conventions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("API key")
                    .description(Some("A key: `Authorization: Bearer sk_live_…`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "A key in the X-API-Key header",
            ))),
        );
        components
            .schemas
            .insert("Problem".to_owned(), RefOr::T(problem_schema()));
        // The default, for tools that read only the top; every operation says its own.
        doc.security = Some(key_requirements());
        for item in doc.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                if operation.security.is_none() {
                    behind_the_key_layer(operation);
                }
                for (status, response) in operation.responses.responses.iter_mut() {
                    if let RefOr::T(response) = response
                        && !status.starts_with(['1', '2', '3'])
                        && response.content.is_empty()
                    {
                        response.content.insert(
                            PROBLEM_JSON.to_owned(),
                            Content::new(Some(Ref::from_schema_name("Problem"))),
                        );
                    }
                }
            }
        }
    }
}

fn behind_the_key_layer(operation: &mut Operation) {
    operation.security = Some(key_requirements());
    for LayerAnswer {
        status,
        description,
        header,
    } in KEY_LAYER_ANSWERS
    {
        let responses = &mut operation.responses.responses;
        match responses.get_mut(status) {
            // The handler answers this status too (a 400 for bad JSON): one response, both
            // reasons.
            Some(RefOr::T(response)) => {
                response.description = format!("{} Or: {description}", response.description);
            }
            Some(RefOr::Ref(_)) => {}
            None => {
                responses.insert(status.to_owned(), RefOr::T(answer(description, header)));
            }
        }
        if let (Some((name, about)), Some(RefOr::T(response))) = (header, responses.get_mut(status))
        {
            response
                .headers
                .insert(name.to_owned(), string_header(about));
        }
    }
}

/// A key, in either header (alternatives: one of the two).
fn key_requirements() -> Vec<SecurityRequirement> {
    vec![
        SecurityRequirement::new("bearer", Vec::<String>::new()),
        SecurityRequirement::new("api_key", Vec::<String>::new()),
    ]
}

fn answer(description: &str, header: Option<(&str, &str)>) -> Response {
    let mut response = ResponseBuilder::new().description(description);
    if let Some((name, about)) = header {
        response = response.header(name, string_header(about));
    }
    response.build()
}

fn string_header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::String))
        .description(Some(description))
        .build()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, TestRunner};
    use serde_json::{Map, Value, json};
    use tower::ServiceExt;

    use super::*;
    use crate::store::{AuditEvent, DeliveryState, EventType, KeyStore, NewKey};
    use crate::{CachedResolver, KeyStatus, MemoryStore, Scopes};

    fn doc() -> Value {
        serde_json::to_value(openapi()).unwrap()
    }

    fn portal_doc() -> Value {
        serde_json::to_value(portal_openapi()).unwrap()
    }

    const METHODS: [&str; 5] = ["get", "put", "post", "patch", "delete"];

    /// (path, method, operation) of every documented operation.
    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut all = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                if let Some(op) = item.get(method) {
                    all.push((path.clone(), method.to_owned(), op.clone()));
                }
            }
        }
        all
    }

    /// The operations anyone may call: the pages, the documents, and GitHub's endpoint
    /// (signed by GitHub).
    const PUBLIC: [(&str, &str); 5] = [
        ("/admin/", "get"),
        ("/admin/openapi.json", "get"),
        ("/github/secret-scanning", "post"),
        ("/portal/", "get"),
        ("/portal/openapi.json", "get"),
    ];

    fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
        let schema = &doc["components"]["schemas"][name];
        assert!(schema.is_object(), "no schema {name}");
        schema
    }

    #[test]
    fn every_error_is_a_problem_and_keyed_operations_say_what_the_key_layer_answers() {
        let doc = doc();
        let portal = portal_doc();
        let ops = operations(&doc);
        assert!(ops.len() >= 16, "{} operations", ops.len());
        let portal_ops = operations(&portal);
        assert_eq!(portal_ops.len(), 9, "{portal_ops:?}");
        for (path, method, op) in ops.iter().chain(&portal_ops) {
            let at = format!("{} {path}", method.to_uppercase());
            let responses = op["responses"].as_object().unwrap();
            for (status, response) in responses {
                if status.starts_with(['4', '5']) {
                    let content = response["content"].as_object().unwrap_or_else(|| {
                        panic!("{at} {status}: no body; every error is a problem")
                    });
                    assert_eq!(
                        content.keys().collect::<Vec<_>>(),
                        [PROBLEM_JSON],
                        "{at} {status}"
                    );
                    assert_eq!(
                        content[PROBLEM_JSON]["schema"]["$ref"], "#/components/schemas/Problem",
                        "{at} {status}"
                    );
                }
                assert!(
                    !response["description"].as_str().unwrap().is_empty(),
                    "{at} {status}: say what it means"
                );
            }
            if PUBLIC.contains(&(path.as_str(), method.as_str())) {
                assert_eq!(op["security"], json!([{}]), "{at} needs no key");
                continue;
            }
            assert_eq!(
                op["security"],
                json!([{"bearer": []}, {"api_key": []}]),
                "{at}"
            );
            for status in ["400", "401", "403", "503"] {
                assert!(responses.contains_key(status), "{at}: no {status}");
            }
            assert!(
                responses["401"]["headers"]
                    .get("WWW-Authenticate")
                    .is_some(),
                "{at}"
            );
            assert!(
                responses["503"]["headers"].get("Retry-After").is_some(),
                "{at}"
            );
            if path.contains("{id}") {
                assert!(responses.contains_key("404"), "{at}: an unknown id");
                let id = op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == "id")
                    .unwrap_or_else(|| panic!("{at}: the id parameter"));
                assert_eq!(id["in"], "path");
                assert_eq!(id["schema"]["pattern"], KEY_ID_PATTERN, "{at}");
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "422"] {
                    assert!(
                        responses.contains_key(status),
                        "{at}: a body can be {status}"
                    );
                }
            }
        }
        // The ones that refuse to change the caller's own key say so.
        for (doc, path, method) in [
            (&doc, "/admin/keys/{id}", "delete"),
            (&doc, "/admin/keys/{id}", "patch"),
            (&doc, "/admin/keys/{id}/revoke", "post"),
            (&doc, "/admin/keys/{id}/rotate", "post"),
            (&portal, "/portal/keys/{id}", "delete"),
            (&portal, "/portal/keys/{id}/revoke", "post"),
            (&portal, "/portal/keys/{id}/rotate", "post"),
        ] {
            assert!(
                doc["paths"][path][method]["responses"].get("409").is_some(),
                "{method} {path}"
            );
        }
        // A request for more than the calling key has.
        for (path, method) in [
            ("/portal/keys", "post"),
            ("/portal/keys/{id}/rotate", "post"),
        ] {
            let forbidden = &portal["paths"][path][method]["responses"]["403"]["description"];
            assert!(
                forbidden
                    .as_str()
                    .unwrap()
                    .contains("more than the calling key"),
                "{method} {path}: {forbidden}"
            );
        }
        let own = schema(&portal, "OwnKeyRequest");
        assert_eq!(own["additionalProperties"], false);
        assert!(
            own["properties"].get("consumer").is_none(),
            "always the caller's"
        );
        assert_eq!(own["properties"]["name"]["pattern"], TEXT_PATTERN);
        assert_eq!(own["properties"]["scopes"]["maxItems"], MAX_SCOPES);
        assert_eq!(
            own["properties"]["allowed_ips"]["items"]["pattern"],
            NETWORK_PATTERN
        );
        let problem = schema(&doc, "Problem");
        assert_eq!(
            problem["required"],
            json!(["type", "title", "status", "detail"])
        );
        assert!(
            problem.get("additionalProperties").is_none(),
            "RFC 9457 allows extension members"
        );
    }

    #[test]
    fn request_schemas_carry_the_rules_the_handlers_check() {
        use super::super::{MAX_GRACE, MAX_IMPORT_BYTES};
        let doc = doc();
        let create = schema(&doc, "CreateKeyRequest");
        assert_eq!(create["additionalProperties"], false);
        assert_eq!(create["required"], json!(["consumer"]));
        let consumer = &create["properties"]["consumer"];
        assert_eq!(consumer["type"], "string");
        assert_eq!(consumer["minLength"], 1);
        assert_eq!(consumer["maxLength"], MAX_TEXT);
        assert_eq!(consumer["pattern"], TEXT_PATTERN);
        assert_eq!(
            create["properties"]["name"]["type"],
            json!(["string", "null"])
        );
        assert_eq!(create["properties"]["name"]["pattern"], TEXT_PATTERN);
        let expires = &create["properties"]["expires_in_seconds"];
        assert_eq!(expires["type"], json!(["integer", "null"]));
        assert_eq!(
            (expires["minimum"].clone(), expires["maximum"].clone()),
            (json!(1), json!(MAX_EXPIRES_IN))
        );
        for (field, max, pattern) in [
            ("scopes", MAX_SCOPES, SCOPE_PATTERN),
            ("allowed_ips", MAX_NETWORKS, NETWORK_PATTERN),
        ] {
            let list = &create["properties"][field];
            assert_eq!(list["maxItems"], max, "{field}");
            assert_eq!(list["items"]["pattern"], pattern, "{field}");
        }
        assert_eq!(
            create["properties"]["scopes"]["items"]["maxLength"],
            MAX_SCOPE_LEN
        );

        let limit = schema(&doc, "RateLimitRequest");
        assert_eq!(limit["additionalProperties"], false);
        assert_eq!(limit["required"], json!(["requests", "per_seconds"]));
        for (field, max) in [
            ("requests", 1_000_000_000u64),
            ("per_seconds", 365 * 86_400),
            ("burst", 1_000_000_000),
        ] {
            let p = &limit["properties"][field];
            assert!(p["type"].to_string().contains("integer"), "{field}");
            assert_eq!(
                (p["minimum"].clone(), p["maximum"].clone()),
                (json!(1), json!(max))
            );
        }

        let rotate = schema(&doc, "RotateRequest");
        assert_eq!(rotate["additionalProperties"], false);
        assert_eq!(rotate["required"], json!(["grace_seconds"]));
        let grace = &rotate["properties"]["grace_seconds"];
        assert_eq!(grace["type"], "integer", "a whole number");
        assert_eq!(
            (grace["minimum"].clone(), grace["maximum"].clone()),
            (json!(0), json!(MAX_GRACE))
        );

        let update = schema(&doc, "UpdateKeyRequest");
        let fields = &update["allOf"][0];
        assert_eq!(fields["additionalProperties"], false);
        assert_eq!(
            fields["properties"]["expires_in_seconds"]["maximum"],
            MAX_EXPIRES_IN
        );
        assert_eq!(fields["properties"]["scopes"]["maxItems"], MAX_SCOPES);
        // Something to change: `{}` and `{"scopes": null}` are refused.
        assert_eq!(
            update["allOf"][1]["anyOf"][0]["required"],
            json!(["expires_in_seconds"])
        );
        assert_eq!(
            update["allOf"][1]["anyOf"][1]["required"],
            json!(["scopes"])
        );
        assert_eq!(
            update["allOf"][1]["anyOf"][2]["required"],
            json!(["allowed_ips"])
        );
        let networks = &fields["properties"]["allowed_ips"];
        assert_eq!(networks["maxItems"], MAX_NETWORKS);
        assert_eq!(networks["items"]["pattern"], NETWORK_PATTERN);
        // An import's 422 lists every bad row.
        let problem = schema(&doc, "Problem");
        assert_eq!(
            problem["properties"]["errors"]["items"]["required"],
            json!(["row", "field", "detail"])
        );

        let import = schema(&doc, "ImportKeyRequest");
        assert_eq!(import["additionalProperties"], false);
        assert_eq!(import["required"], json!(["hash", "consumer"]));
        assert_eq!(import["properties"]["hash"]["pattern"], "^[0-9a-fA-F]{64}$");
        assert_eq!(import["properties"]["consumer"]["pattern"], TEXT_PATTERN);
        assert_eq!(import["properties"]["expires_at"]["format"], "date-time");
        assert_eq!(import["properties"]["expires_at"]["pattern"], TIME_PATTERN);
        let body = &doc["paths"]["/admin/keys/import"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        assert_eq!(body["$ref"], "#/components/schemas/ImportRequest");
        assert_eq!(schema(&doc, "ImportRequest")["maxItems"], MAX_IMPORT_KEYS);
        assert_eq!(
            MAX_IMPORT_BYTES,
            16 << 20,
            "the 413 description says 16 MiB"
        );

        let deliveries = &doc["paths"]["/admin/webhooks/deliveries"]["get"]["parameters"][0];
        assert_eq!(deliveries["name"], "limit");
        assert_eq!(
            (
                deliveries["schema"]["minimum"].clone(),
                deliveries["schema"]["maximum"].clone()
            ),
            (json!(1), json!(1000))
        );
        let top = &doc["paths"]["/admin/usage/top"]["get"]["parameters"];
        let limit = top
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap();
        assert!(limit["schema"]["type"].to_string().contains("integer"));
        for path in ["/admin/usage/series", "/admin/usage/top"] {
            for p in doc["paths"][path]["get"]["parameters"].as_array().unwrap() {
                if p["name"] == "from" || p["name"] == "to" {
                    assert_eq!(p["schema"]["format"], "date-time", "{path}");
                    assert_eq!(p["schema"]["pattern"], TIME_PATTERN, "{path}");
                }
            }
        }
    }

    #[test]
    fn responses_say_which_fields_are_always_there_and_their_words() {
        let doc = doc();
        let key = schema(&doc, "KeyBody");
        let required: BTreeSet<&str> = key["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for field in [
            "id",
            "start",
            "consumer",
            "name",
            "scopes",
            "created_at",
            "expires_at",
            "revoked_at",
            "status",
            "allowed_ips",
        ] {
            assert!(required.contains(field), "KeyBody.{field} is always sent");
        }
        for field in ["expires_at", "revoked_at"] {
            assert_eq!(
                key["properties"][field]["type"],
                json!(["string", "null"]),
                "{field}"
            );
            assert_eq!(key["properties"][field]["format"], "date-time");
        }
        let statuses = [KeyStatus::Active, KeyStatus::Expired, KeyStatus::Revoked].map(|s| {
            // Exhaustive: a new status must be documented.
            match s {
                KeyStatus::Active | KeyStatus::Expired | KeyStatus::Revoked => s.as_str(),
            }
        });
        assert_eq!(schema(&doc, "KeyStatusName")["enum"], json!(statuses));

        let detail = schema(&doc, "KeyDetail");
        assert_eq!(detail["allOf"][1]["required"], json!(["last_used_at"]));
        let usage = schema(&doc, "UsageBody");
        assert_eq!(
            usage["required"],
            json!(["requests", "rejected", "last_used_at"])
        );

        let events: Vec<&str> = [
            AuditEvent::Created,
            AuditEvent::Rotated {
                new_key_id: String::new(),
            },
            AuditEvent::ExpiredByRotation,
            AuditEvent::Revoked,
            AuditEvent::Deleted,
            AuditEvent::ExpiryChanged,
            AuditEvent::ScopesChanged,
            AuditEvent::AllowedIpsChanged,
            AuditEvent::Leaked {
                url: String::new(),
                source: String::new(),
            },
            AuditEvent::Imported,
        ]
        .iter()
        .map(|e| match e {
            // Exhaustive: a new event must be documented.
            AuditEvent::Created
            | AuditEvent::Rotated { .. }
            | AuditEvent::ExpiredByRotation
            | AuditEvent::Revoked
            | AuditEvent::Deleted
            | AuditEvent::ExpiryChanged
            | AuditEvent::ScopesChanged
            | AuditEvent::AllowedIpsChanged
            | AuditEvent::Leaked { .. }
            | AuditEvent::Imported => e.name(),
        })
        .collect();
        assert_eq!(schema(&doc, "AuditEventName")["enum"], json!(events));
        let audit = schema(&doc, "AuditEntryBody");
        assert_eq!(audit["required"], json!(["at", "event", "key_id", "actor"]));
        assert_eq!(
            audit["properties"]["url"]["type"], "string",
            "left out when empty, never null"
        );

        let types: Vec<&str> = [
            EventType::KeyCreated,
            EventType::KeyRotated,
            EventType::KeyRevoked,
            EventType::KeyExpiring,
            EventType::KeyExpired,
            EventType::KeyLeaked,
        ]
        .iter()
        .map(|t| t.name())
        .collect();
        assert_eq!(schema(&doc, "EventTypeName")["enum"], json!(types));
        let states: Vec<&str> = [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Failed,
        ]
        .iter()
        .map(|s| s.name())
        .collect();
        assert_eq!(schema(&doc, "DeliveryStateName")["enum"], json!(states));
        let delivery = schema(&doc, "DeliveryBody");
        assert_eq!(delivery["required"].as_array().unwrap().len(), 11);
    }

    /// Values drawn from `pattern` (anchors taken off: proptest draws whole matches).
    fn drawn(pattern: &str, cases: u32, mut check: impl FnMut(&str)) {
        let body = pattern
            .strip_prefix('^')
            .and_then(|p| p.strip_suffix('$'))
            .unwrap_or(pattern);
        let strategy = proptest::string::string_regex(body).unwrap();
        let mut runner = TestRunner::new(Config {
            cases,
            ..Config::default()
        });
        for _ in 0..cases {
            let value = strategy.new_tree(&mut runner).unwrap().current();
            check(&value);
        }
    }

    fn text_ok(value: &str) -> bool {
        let map: Map<String, Value> = [("consumer".to_owned(), json!(value))]
            .into_iter()
            .collect();
        super::super::text(&map, "consumer", true).is_ok()
    }

    #[test]
    fn what_the_patterns_allow_the_server_takes() {
        drawn(TEXT_PATTERN, 500, |s| {
            // The length bounds are the schema's other keywords.
            if (1..=MAX_TEXT).contains(&s.chars().count()) {
                assert!(text_ok(s), "{s:?}");
            }
        });
        drawn(SCOPE_PATTERN, 500, |s| {
            if s.len() <= MAX_SCOPE_LEN {
                assert!(crate::Scope::new(s).is_ok(), "{s:?}");
            }
        });
        drawn(NETWORK_PATTERN, 2000, |s| {
            assert!(crate::record::parse_network(s).is_ok(), "{s:?}");
        });
        // From 1971 on, every RFC 3339 time (days to 28: the pattern does not know the
        // months), with or without fractions, in any offset.
        let time = format!(
            "{}(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{{1,9}})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])",
            TIME_PATTERN.strip_prefix('^').unwrap()
        );
        drawn(&time, 500, |s| {
            assert!(crate::store::import::parse_rfc3339(s).is_some(), "{s:?}");
        });
    }

    #[test]
    fn what_the_patterns_refuse_the_server_refuses() {
        for bad in [
            "",
            " ",
            "\u{3000}\u{a0}",
            "a\u{0}b",
            "line\nbreak",
            "tab\t",
            "\u{85}",
        ] {
            assert!(!text_ok(bad), "{bad:?}");
        }
        assert!(!text_ok(&"x".repeat(MAX_TEXT + 1)));
        assert!(text_ok(&"é".repeat(MAX_TEXT)), "characters, not bytes");
        for bad in [
            "",
            "a b",
            "*x",
            "a*",
            "orders:**",
            "é",
            &"a".repeat(MAX_SCOPE_LEN + 1),
        ] {
            assert!(crate::Scope::new(bad).is_err(), "{bad:?}");
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "1.2.3",
            "256.1.1.1",
            "01.2.3.4",
            "fe80::1%eth0",
            "example.com",
        ] {
            assert!(crate::record::parse_network(bad).is_err(), "{bad:?}");
        }
        for bad in ["1969-12-31T23:59:59Z", "2026-12-01", "2026-12-01T00:00:00"] {
            assert!(
                crate::store::import::parse_rfc3339(bad).is_none(),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn key_ids_are_what_the_document_says() {
        let store = MemoryStore::new();
        for _ in 0..50 {
            let id = store
                .create(NewKey::new("c"), "test")
                .await
                .unwrap()
                .record
                .id;
            let body = id.strip_prefix("key_").unwrap();
            assert_eq!(body.len(), 22, "{id}");
            assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        }
        assert_eq!(KEY_ID_PATTERN, "^key_[0-9A-Za-z]{22}$");
    }

    /// `.route("…", …)` calls of the admin module's files (tests left out): each path
    /// and its methods.
    fn routes_in_the_source() -> BTreeSet<(String, String)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/admin");
        let mut routes = BTreeSet::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            let mut rest = code;
            while let Some(at) = rest.find(".route(") {
                rest = &rest[at + ".route(".len()..];
                // The call's text, up to its closing parenthesis.
                let mut depth = 1;
                let end = rest
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '(' => 1,
                            ')' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map(|(i, _)| i)
                    .unwrap();
                let call = &rest[..end];
                let (route, handlers) = call.split_once(',').unwrap();
                let route = match route.trim() {
                    // SecretScanning's own path, by default this.
                    "&path" => secret_scanning::DEFAULT_PATH.to_owned(),
                    literal => literal
                        .strip_prefix('"')
                        .and_then(|l| l.strip_suffix('"'))
                        .unwrap_or_else(|| panic!("{}: a route path {literal}", path.display()))
                        .to_owned(),
                };
                let words = handlers.split(|c: char| !(c.is_alphanumeric() || c == '_'));
                let mut seen = false;
                for (word, next) in words.clone().zip(words.skip(1)) {
                    let _ = next;
                    if METHODS.contains(&word) {
                        routes.insert((route.clone(), word.to_owned()));
                        seen = true;
                    }
                }
                assert!(seen, "{}: no method for {route}", path.display());
                rest = &rest[end..];
            }
        }
        routes
    }

    #[test]
    fn every_route_of_the_source_is_documented() {
        let (doc, portal) = (doc(), portal_doc());
        let documented: BTreeSet<(String, String)> = operations(&doc)
            .into_iter()
            .chain(operations(&portal))
            .map(|(path, method, _)| (path, method))
            .collect();
        let routed = routes_in_the_source();
        assert!(routed.len() >= 24, "{routed:?}");
        // Each document has its own API's paths.
        for (path, _) in operations(&portal).iter().map(|(p, m, _)| (p, m)) {
            assert!(
                path.starts_with("/portal/"),
                "{path} in the portal's document"
            );
        }
        let missing: Vec<_> = routed.difference(&documented).collect();
        assert!(missing.is_empty(), "routes with no operation: {missing:?}");
        let extra: Vec<_> = documented.difference(&routed).collect();
        assert!(extra.is_empty(), "operations with no route: {extra:?}");
    }

    /// The PEM of the secret_scanning module's example: a key of no one's.
    const GITHUB_KEYS: &str = r#"{"public_keys":[{"key_identifier":"k","is_current":true,"key":"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEtxOaNlumnsq8qF4uMi+RHEVRq1AS\n1w9c7Kwz7Satdj2qqnLmbLLV4MM8OIufeWqXkQPssdXur5yUX/khkTFepQ==\n-----END PUBLIC KEY-----\n"}]}"#;

    #[tokio::test]
    async fn every_documented_operation_is_answered_by_its_handler_and_no_other_method_is() {
        let cache = CachedResolver::new(MemoryStore::new());
        let admin = cache
            .create(
                NewKey::new("ops").with_scopes(Scopes::parse(["admin"]).unwrap()),
                "test",
            )
            .await
            .unwrap();
        let bearer = format!("Bearer {}", admin.key.expose_secret());
        let config = super::super::AdminConfig::new().webhook_deliveries(MemoryStore::new());
        let portal_key = cache
            .create(
                NewKey::new("acme").with_scopes(Scopes::parse(["keys:self"]).unwrap()),
                "test",
            )
            .await
            .unwrap();
        let portal_bearer = format!("Bearer {}", portal_key.key.expose_secret());
        let keys = secret_scanning::PublicKeys::parse(GITHUB_KEYS.as_bytes()).unwrap();
        let app = super::super::router_with(cache.clone(), config.clone())
            .merge(super::super::portal::router(cache.clone(), config))
            .merge(secret_scanning::SecretScanning::new(cache, keys).router());
        let call = |method: &str, path: &str, key: Option<&str>| {
            let mut request = Request::builder()
                .method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap())
                .uri(path.replace("{id}", "key_0000000000000000000000"));
            if let Some(key) = key {
                request = request.header("authorization", key);
            }
            let app = app.clone();
            async move {
                let response = app
                    .oneshot(request.body(Body::from("{}")).unwrap())
                    .await
                    .unwrap();
                let typed = response.headers().contains_key("content-type");
                (response.status(), typed)
            }
        };
        for (doc, bearer) in [(doc(), &bearer), (portal_doc(), &portal_bearer)] {
            for (path, item) in doc["paths"].as_object().unwrap() {
                for method in METHODS {
                    let at = format!("{} {path}", method.to_uppercase());
                    let (status, typed) = call(method, path, Some(bearer)).await;
                    if item.get(method).is_some() {
                        // Answered by the handler: not the router's 405, nor its bare 404.
                        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{at}");
                        assert!(status != StatusCode::NOT_FOUND || typed, "{at}: not routed");
                        if !PUBLIC.contains(&(path.as_str(), method)) {
                            let (status, _) = call(method, path, None).await;
                            assert_eq!(status, StatusCode::UNAUTHORIZED, "{at} without a key");
                        }
                    } else {
                        assert_eq!(
                            status,
                            StatusCode::METHOD_NOT_ALLOWED,
                            "{at} is answered but not documented"
                        );
                    }
                }
            }
        }
    }
}
