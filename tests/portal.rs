//! The self-service portal (`/portal/*`) of the example server, over real HTTP: only the
//! caller's consumer, never more than the calling key, never the last `keys:self` key.
#![cfg(all(
    unix,
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis",
    feature = "admin",
    feature = "webhooks"
))]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "common/browser.rs"]
mod browser;
#[path = "common/server.rs"]
mod server;
#[path = "common/unique.rs"]
mod unique;

use browser::Browser;
use server::{Answer, Client, Server, start_sqlite};

/// A key made through the admin API: its secret and id.
struct Made {
    key: String,
    id: String,
}

/// The example server on a SQLite file of its own, and a client with its admin key.
struct Portal {
    server: Server,
    client: Client,
    admin: String,
}

impl Portal {
    fn start() -> Self {
        let server = start_sqlite(&[]);
        let client = Client::new(&server.addr);
        let admin = server.admin_key.clone().unwrap();
        Self {
            server,
            client,
            admin,
        }
    }

    /// A key made by the admin from `body`.
    async fn admin_creates(&mut self, body: Value) -> Made {
        let admin = self.admin.clone();
        let made = self
            .client
            .send("POST", "/admin/keys", Some(&admin), Some(&body))
            .await;
        assert_eq!(made.status, 201, "{}", made.body);
        let made = made.json();
        Made {
            key: made["key"].as_str().unwrap().to_owned(),
            id: made["id"].as_str().unwrap().to_owned(),
        }
    }

    async fn call(&mut self, method: &str, path: &str, key: &str, body: Option<Value>) -> Answer {
        self.client
            .send(method, path, Some(key), body.as_ref())
            .await
    }

    /// The audit entries of `id`, through the admin API.
    async fn audit(&mut self, id: &str) -> Vec<Value> {
        let admin = self.admin.clone();
        let log = self
            .client
            .get(&format!("/admin/audit?key_id={id}"), Some(&admin))
            .await;
        assert_eq!(log.status, 200, "{}", log.body);
        log.json().as_array().unwrap().clone()
    }

    /// The status of a request to `/v1/whoami` with `key`.
    async fn whoami(&mut self, key: &str) -> u16 {
        self.client.get("/v1/whoami", Some(key)).await.status
    }
}

/// A problem+json answer with `status`, naming `field` (if given).
#[track_caller]
fn assert_problem(answer: &Answer, status: u16, field: Option<&str>) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json"),
        "{}",
        answer.body
    );
    let body = answer.json();
    assert_eq!(body["status"], status);
    if let Some(field) = field {
        assert_eq!(body["field"], field, "{body}");
    }
}

fn ids(list: &Answer) -> Vec<String> {
    assert_eq!(list.status, 200, "{}", list.body);
    list.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_consumer_manages_its_own_keys_and_only_those() {
    let mut p = Portal::start();
    let me = p
        .admin_creates(
            json!({"consumer":"acme","name":"portal","scopes":["keys:self","orders:read"]}),
        )
        .await;
    let plain = p
        .admin_creates(json!({"consumer":"acme","name":"plain","scopes":["orders:read"]}))
        .await;
    let theirs = p
        .admin_creates(json!({"consumer":"globex","scopes":["keys:self"]}))
        .await;

    // No key: 401; a key without keys:self (the admin key too): 403; both problem+json.
    let anonymous = p.client.get("/portal/keys", None).await;
    assert_problem(&anonymous, 401, None);
    let (plain_key, admin) = (plain.key.clone(), p.admin.clone());
    for key in [&plain_key, &admin] {
        let refused = p.call("GET", "/portal/keys", key, None).await;
        assert_problem(&refused, 403, None);
    }

    // The list holds acme's keys, not globex's nor the admin's, and never a secret.
    let list = p.call("GET", "/portal/keys", &me.key, None).await;
    let mut listed = ids(&list);
    listed.sort();
    let mut want = vec![me.id.clone(), plain.id.clone()];
    want.sort();
    assert_eq!(listed, want);
    assert!(!list.body.contains(&me.key[8..]), "a secret in the list");
    assert!(
        list.json()
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["consumer"] == "acme")
    );

    // A scope the caller lacks is refused, naming the field; so is a consumer.
    let wider = p
        .call(
            "POST",
            "/portal/keys",
            &me.key,
            Some(json!({"scopes":["orders:write"]})),
        )
        .await;
    assert_problem(&wider, 403, Some("scopes"));
    assert!(
        wider.json()["detail"]
            .as_str()
            .unwrap()
            .contains("orders:write")
    );
    let elsewhere = p
        .call(
            "POST",
            "/portal/keys",
            &me.key,
            Some(json!({"consumer":"globex"})),
        )
        .await;
    assert_problem(&elsewhere, 422, Some("consumer"));
    let bad = p
        .call(
            "POST",
            "/portal/keys",
            &me.key,
            Some(json!({"scopes":"orders:read"})),
        )
        .await;
    assert_problem(&bad, 422, Some("scopes"));

    // A key made here belongs to acme, authenticates at once, and is audited with the
    // calling key's id as the actor.
    let made = p
        .call(
            "POST",
            "/portal/keys",
            &me.key,
            Some(json!({"name":"ci","scopes":["orders:read"]})),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let made = made.json();
    assert_eq!(made["consumer"], "acme");
    assert_eq!(made["scopes"], json!(["orders:read"]));
    let (new_key, new_id) = (
        made["key"].as_str().unwrap().to_owned(),
        made["id"].as_str().unwrap().to_owned(),
    );
    let orders = p.client.get("/v1/orders", Some(&new_key)).await;
    assert_eq!(orders.status, 200, "{}", orders.body);
    let whoami = p.client.get("/v1/whoami", Some(&new_key)).await.json();
    assert_eq!(whoami["consumer"], "acme");
    let created = p.audit(&new_id).await;
    assert_eq!(created[0]["event"], "created");
    assert_eq!(created[0]["actor"], me.id.as_str());
    assert!(ids(&p.call("GET", "/portal/keys", &me.key, None).await).contains(&new_id));
    // Without keys:self the new key does not get in.
    assert_problem(
        &p.call("GET", "/portal/keys", &new_key, None).await,
        403,
        None,
    );

    // The new key's requests reach its usage series (written every 5 s): one bucket a
    // minute for the last hour.
    let series_path = format!("/portal/keys/{new_id}/usage/series?step=minute");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let series = p.call("GET", &series_path, &me.key, None).await;
        assert_eq!(series.status, 200, "{}", series.body);
        let series = series.json();
        assert_eq!(series["step"], "minute");
        let buckets = series["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), 60);
        let allowed: u64 = buckets.iter().map(|b| b["allowed"].as_u64().unwrap()).sum();
        if allowed == 2 {
            break;
        }
        assert!(allowed < 2, "{series}");
        assert!(
            Instant::now() < deadline,
            "the usage did not arrive: {series}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let bad = p
        .call(
            "GET",
            &format!("/portal/keys/{new_id}/usage/series?step=day"),
            &me.key,
            None,
        )
        .await;
    assert_problem(&bad, 422, Some("step"));

    // One of acme's own keys, in detail.
    let shown = p
        .call("GET", &format!("/portal/keys/{}", plain.id), &me.key, None)
        .await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.json()["name"], "plain");
    assert!(shown.json().get("last_used_at").is_some());

    // Another consumer's key answers exactly as a key that does not exist, whatever is
    // asked of it, and nothing happens to it.
    let rotate = json!({"grace_seconds": 0});
    for (method, suffix, body) in [
        ("GET", "", None),
        ("DELETE", "", None),
        ("POST", "/revoke", None),
        ("POST", "/rotate", Some(rotate.clone())),
        ("GET", "/usage/series", None),
        ("GET", "/usage/series?step=day", None),
    ] {
        let other = p
            .call(
                method,
                &format!("/portal/keys/{}{suffix}", theirs.id),
                &me.key,
                body.clone(),
            )
            .await;
        let unknown = p
            .call(
                method,
                &format!("/portal/keys/key_unknown{suffix}"),
                &me.key,
                body,
            )
            .await;
        assert_problem(&other, 404, None);
        assert_eq!(
            (other.status, other.header("content-type"), &other.body),
            (
                unknown.status,
                unknown.header("content-type"),
                &unknown.body
            ),
            "{method} {suffix}"
        );
    }
    assert_eq!(p.whoami(&theirs.key).await, 200, "globex's key still works");
    assert_eq!(p.audit(&theirs.id).await.len(), 1, "only its creation");

    // Rotation of an own key: a new key that works, audited as the caller's.
    let rotated = p
        .call(
            "POST",
            &format!("/portal/keys/{new_id}/rotate"),
            &me.key,
            Some(rotate),
        )
        .await;
    assert_eq!(rotated.status, 201, "{}", rotated.body);
    let successor = rotated.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(p.whoami(&successor).await, 200);
    let log = p.audit(&new_id).await;
    let rotation = log
        .iter()
        .find(|e| e["event"] == "rotated")
        .expect("rotated");
    assert_eq!(rotation["actor"], me.id.as_str());

    // Revocation: the key fails at once, audited as the caller's, and stays readable.
    let plain_path = format!("/portal/keys/{}", plain.id);
    let revoked = p
        .call("POST", &format!("{plain_path}/revoke"), &me.key, None)
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(revoked.json()["status"], "revoked");
    assert_eq!(p.whoami(&plain.key).await, 401);
    let log = p.audit(&plain.id).await;
    assert_eq!(log.last().unwrap()["event"], "revoked");
    assert_eq!(log.last().unwrap()["actor"], me.id.as_str());
    let shown = p.call("GET", &plain_path, &me.key, None).await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.json()["revoked_at"], revoked.json()["revoked_at"]);
    // Revoking again changes nothing.
    let again = p
        .call("POST", &format!("{plain_path}/revoke"), &me.key, None)
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["revoked_at"], revoked.json()["revoked_at"]);

    // Deletion: gone from its URI and the list, answered as an unknown key; its log
    // stays (for the operators).
    let deleted = p.call("DELETE", &plain_path, &me.key, None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    for (method, suffix) in [
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/revoke"),
        ("GET", "/usage/series"),
    ] {
        let gone = p
            .call(method, &format!("{plain_path}{suffix}"), &me.key, None)
            .await;
        let unknown = p
            .call(
                method,
                &format!("/portal/keys/key_unknown{suffix}"),
                &me.key,
                None,
            )
            .await;
        assert_problem(&gone, 404, None);
        assert_eq!(gone.body, unknown.body, "{method} {suffix}");
    }
    assert!(!ids(&p.call("GET", "/portal/keys", &me.key, None).await).contains(&plain.id));
    let log = p.audit(&plain.id).await;
    assert_eq!(log.last().unwrap()["event"], "deleted");
    assert_eq!(log.last().unwrap()["actor"], me.id.as_str());

    // A key does not revoke or delete itself (409; the store's own guard for the
    // consumer's last keys:self key is shown by the stale-caller test below), and it
    // keeps working.
    let own_path = format!("/portal/keys/{}", me.id);
    for (method, path) in [
        ("DELETE", own_path.clone()),
        ("POST", format!("{own_path}/revoke")),
    ] {
        let last = p.call(method, &path, &me.key, None).await;
        assert_problem(&last, 409, None);
    }
    assert_eq!(p.whoami(&me.key).await, 200);
    // With a second one made here, the first can go; the second carries on.
    let second = p
        .call(
            "POST",
            "/portal/keys",
            &me.key,
            Some(json!({"scopes":["keys:self"]})),
        )
        .await;
    assert_eq!(second.status, 201, "{}", second.body);
    let second = second.json();
    let (second_key, second_id) = (
        second["key"].as_str().unwrap().to_owned(),
        second["id"].as_str().unwrap().to_owned(),
    );
    let gone = p
        .call("POST", &format!("{own_path}/revoke"), &second_key, None)
        .await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    assert_eq!(p.whoami(&me.key).await, 401);
    for (method, suffix) in [("DELETE", ""), ("POST", "/revoke")] {
        let last = p
            .call(
                method,
                &format!("/portal/keys/{second_id}{suffix}"),
                &second_key,
                None,
            )
            .await;
        assert_problem(&last, 409, None);
    }
    assert_eq!(
        ids(&p.call("GET", "/portal/keys", &second_key, None).await).len(),
        4,
        "acme: portal (revoked), ci, its successor, the second (plain was deleted)"
    );
}

#[tokio::test]
async fn two_revocations_at_once_of_the_last_two_keys_self_keys_leave_one() {
    let mut p = Portal::start();
    for round in 0..4 {
        let consumer = format!("race{round}");
        let body = json!({"consumer": consumer, "scopes": ["keys:self"]});
        let a = p.admin_creates(body.clone()).await;
        let b = p.admin_creates(body).await;
        // The only keys that get in are these two (a key does not revoke itself): each
        // revokes the other at once, on connections of their own.
        let (mut one, mut two) = (Client::new(&p.server.addr), Client::new(&p.server.addr));
        let (path_a, path_b) = (
            format!("/portal/keys/{}", a.id),
            format!("/portal/keys/{}", b.id),
        );
        let (x, y) = tokio::join!(
            one.send("DELETE", &path_b, Some(&a.key), None),
            two.send("DELETE", &path_a, Some(&b.key), None),
        );
        // One succeeds; the other is refused as the last key (409), or, if it came
        // after the first was done, because its caller is revoked (401).
        let mut statuses = [x.status, y.status];
        statuses.sort();
        assert!(
            statuses == [204, 409] || statuses == [204, 401],
            "round {round}: {statuses:?}: {} / {}",
            x.body,
            y.body
        );
        let working = [p.whoami(&a.key).await, p.whoami(&b.key).await];
        assert_eq!(
            working.iter().filter(|s| **s == 200).count(),
            1,
            "round {round}: {working:?}"
        );
    }
}

#[tokio::test]
async fn a_key_made_here_has_no_more_than_the_key_that_made_it() {
    let mut p = Portal::start();
    let me = p
        .admin_creates(json!({
            "consumer": "acme",
            "scopes": ["keys:self", "orders:*"],
            "expires_in_seconds": 3600,
            "allowed_ips": ["127.0.0.0/8"],
            "rate_limit": {"requests": 100, "per_seconds": 60},
        }))
        .await;
    let create = |body: Value| (body, me.key.clone());

    // Beyond the caller: each refused with 403 naming the field.
    for (body, field) in [
        (json!({"expires_in_seconds": 7200}), "expires_in_seconds"),
        (json!({"allowed_ips": ["10.0.0.0/8"]}), "allowed_ips"),
        (json!({"allowed_ips": []}), "allowed_ips"),
        (
            json!({"rate_limit": {"requests": 200, "per_seconds": 60}}),
            "rate_limit",
        ),
        (
            json!({"rate_limit": {"requests": 100, "per_seconds": 60, "burst": 101}}),
            "rate_limit",
        ),
        (json!({"scopes": ["*"]}), "scopes"),
    ] {
        let (body, key) = create(body);
        let refused = p
            .call("POST", "/portal/keys", &key, Some(body.clone()))
            .await;
        assert_problem(&refused, 403, Some(field));
        assert!(!refused.body.contains(&key[8..]), "the key in an error");
    }
    // Bad input is still 422, as in the admin API.
    let bad = p
        .call(
            "POST",
            "/portal/keys",
            &me.key,
            Some(json!({"rate_limit": {"requests": 0, "per_seconds": 60}})),
        )
        .await;
    assert_problem(&bad, 422, Some("rate_limit.requests"));

    // Within: a narrower scope under the wildcard, a stricter limit. Without an expiry
    // or networks, the new key gets the caller's.
    let made = p
        .call(
            "POST",
            "/portal/keys",
            &me.key,
            Some(json!({"scopes": ["orders:read"], "rate_limit": {"requests": 10, "per_seconds": 60}})),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let made = made.json();
    let mine = p
        .call("GET", &format!("/portal/keys/{}", me.id), &me.key, None)
        .await
        .json();
    assert_eq!(made["expires_at"], mine["expires_at"]);
    assert_eq!(made["allowed_ips"], json!(["127.0.0.0/8"]));
    let narrow = made["key"].as_str().unwrap().to_owned();
    let orders = p.client.get("/v1/orders", Some(&narrow)).await;
    assert_eq!(orders.status, 200, "{}", orders.body);
    assert!(
        orders
            .header("ratelimit-policy")
            .is_some_and(|p| p.contains("q=10;w=60")),
        "{:?}",
        orders.headers
    );

    // A key of acme's with more than the caller cannot be rotated through the portal
    // (the successor's secret would carry it), but it can be revoked.
    let stronger = p
        .admin_creates(json!({"consumer": "acme", "scopes": ["billing:admin"]}))
        .await;
    let rotate = p
        .call(
            "POST",
            &format!("/portal/keys/{}/rotate", stronger.id),
            &me.key,
            Some(json!({"grace_seconds": 0})),
        )
        .await;
    assert_problem(&rotate, 403, Some("scopes"));
    let revoke = p
        .call(
            "POST",
            &format!("/portal/keys/{}/revoke", stronger.id),
            &me.key,
            None,
        )
        .await;
    assert_eq!(revoke.status, 200, "{}", revoke.body);
    // The caller's own key rotates: the successor carries keys:self, so this is fine.
    let own = p
        .call(
            "POST",
            &format!("/portal/keys/{}/rotate", me.id),
            &me.key,
            Some(json!({"grace_seconds": 299})),
        )
        .await;
    // With less grace than 300 s it would lock its caller out before it could switch.
    assert_problem(&own, 409, None);
    let own = p
        .call(
            "POST",
            &format!("/portal/keys/{}/rotate", me.id),
            &me.key,
            Some(json!({"grace_seconds": 300})),
        )
        .await;
    assert_eq!(own.status, 201, "{}", own.body);
    assert_eq!(own.json()["expires_at"], mine["expires_at"]);
}

#[tokio::test]
async fn the_page_loads_without_a_key() {
    let mut p = Portal::start();
    let page = p.client.get("/portal/", None).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(page.body.contains("keys:self"));
    assert!(!page.body.contains("https://"), "nothing from elsewhere");
}

#[tokio::test]
async fn the_portal_in_a_real_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let mut p = Portal::start();
    let me = p
        .admin_creates(
            json!({"consumer":"acme","name":"portal","scopes":["keys:self","orders:read"]}),
        )
        .await;
    p.admin_creates(json!({"consumer":"globex","name":"not yours","scopes":["keys:self"]}))
        .await;
    browser
        .open(&format!("http://{}/portal/", p.server.addr))
        .await;
    assert!(!browser.displayed("#app").await, "hidden until sign-in");

    // A key without keys:self is told why it cannot sign in.
    let plain = p
        .admin_creates(json!({"consumer":"acme","name":"plain"}))
        .await;
    browser.type_into("#key", &plain.key).await;
    browser.click("#sign-in").await;
    browser
        .wait_text("#signin-error", |t| t.contains("keys:self"), "the refusal")
        .await;

    let field = browser.find("#key").await;
    browser
        .session("POST", &format!("/element/{field}/clear"), Some(json!({})))
        .await;
    browser.type_into("#key", &me.key).await;
    browser.click("#sign-in").await;
    let own_row = format!("#keys tr[data-id=\"{}\"]", me.id);
    browser
        .wait_text(
            &own_row,
            |t| t.contains("this key"),
            "the signed-in key marked",
        )
        .await;
    assert!(
        browser.find_all("#keys tr[data-id]").await.len() == 2,
        "acme's two keys"
    );

    // Create a key: the secret shows once, and it works.
    browser.type_into("#new-name", "from the portal").await;
    browser.type_into("#new-scopes", "orders:read").await;
    browser.click("#create").await;
    let secret = browser
        .wait_text(
            "#secret-value",
            |t| t.starts_with("sk_live_"),
            "the new key",
        )
        .await;
    assert_eq!(p.whoami(&secret).await, 200);
    let list = p.call("GET", "/portal/keys", &me.key, None).await.json();
    let id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "from the portal")
        .expect("the new key listed")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let row = format!("#keys tr[data-id=\"{id}\"]");
    browser
        .wait_text(&format!("{row} .status"), |t| t == "active", "the new row")
        .await;
    browser.click("#dismiss").await;
    // Each row draws the last hour, a bar a minute; the new key's requests show there
    // once the server has written them (every 5 s) and the list is refreshed.
    let bars = browser
        .find_all(&format!("{row} td.usage svg rect.bar"))
        .await;
    assert_eq!(bars.len(), 60);
    for _ in 0..3 {
        assert_eq!(p.whoami(&secret).await, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        browser.click("#refresh").await;
        let total = browser
            .wait_text(
                &format!("{row} td.usage .total"),
                |_| true,
                "the usage total",
            )
            .await;
        // The three, and the one right after it was made.
        if total == "4" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the usage did not show: {total:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A scope the signed-in key lacks: the page shows the server's reason.
    browser.type_into("#new-scopes", " orders:write").await;
    browser.click("#create").await;
    browser
        .wait_text(
            "#create-error",
            |t| t.contains("orders:write"),
            "the refusal",
        )
        .await;

    // Revoke it, confirming the dialog: its status changes, and the key is refused.
    browser.click(&format!("{row} .revoke")).await;
    browser.accept_dialog().await;
    browser
        .wait_text(&format!("{row} .status"), |t| t == "revoked", "revoked")
        .await;
    assert_eq!(p.whoami(&secret).await, 401);
    assert_eq!(
        p.call("GET", &format!("/portal/keys/{id}"), &me.key, None)
            .await
            .status,
        200,
        "a revoked key stays"
    );

    // Delete it, confirming the dialog: its row goes, and so does its URI.
    assert!(
        browser.find_all(&format!("{row} .revoke")).await.is_empty(),
        "revoked once"
    );
    browser.click(&format!("{row} .delete")).await;
    browser.accept_dialog().await;
    browser
        .wait_for(
            &format!("return document.querySelectorAll('{row}').length;"),
            |v| v == 0,
            "the row gone",
        )
        .await;
    assert_eq!(
        p.call("GET", &format!("/portal/keys/{id}"), &me.key, None)
            .await
            .status,
        404
    );

    // The signed-in key is the last with keys:self: the page says why it stays.
    browser.click(&format!("{own_row} .revoke")).await;
    browser.accept_dialog().await;
    browser
        .wait_text("#list-error", |t| t.contains("last active key"), "the 409")
        .await;
    assert_eq!(p.whoami(&me.key).await, 200);

    let (page, viewport) = browser.widths().await;
    assert!(
        page <= viewport,
        "the page scrolls sideways: {page} > {viewport}"
    );
    browser.screenshot("portal-1280x800.png").await;
    browser.resize(390, 844).await;
    let (page, viewport) = browser.widths().await;
    assert!(
        page <= viewport,
        "at phone width the page scrolls sideways: {page} > {viewport}"
    );
    let phone = browser.screenshot("portal-phone.png").await;
    assert!(std::fs::metadata(phone).unwrap().len() > 1000);
    browser
        .run("document.getElementById('keys').scrollIntoView(); return null;")
        .await;
    browser.screenshot("portal-phone-keys.png").await;
    browser.quit().await;
}

/// The store's guard itself, over HTTP: a caller that is still cached as valid where the
/// store already revoked it (another instance revoked it, and this one has not heard)
/// asks to revoke its consumer's only other `keys:self` key. That key is the last active
/// one, so the answer is 409 and it keeps working. (A key revoking itself is refused
/// earlier, by the portal; this is the refusal that only the store can make.)
#[tokio::test]
async fn the_last_active_keys_self_key_is_kept_by_the_store_even_for_a_stale_caller() {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use tower_api_key::store::NewKey;
    use tower_api_key::{CachedResolver, KeyStore, MemoryStore, Scopes};

    let store = MemoryStore::new();
    let new =
        || NewKey::new("acme").with_scopes(Scopes::parse(["keys:self", "orders:read"]).unwrap());
    let stale = store.create(new(), "test").await.unwrap();
    let last = store.create(new(), "test").await.unwrap();
    // The cache reads through to `store`; changes made on `store` itself do not reach it.
    let cache = CachedResolver::new(store.clone());
    let app = tower_api_key::admin::portal::router(cache, tower_api_key::admin::AdminConfig::new());
    let call = |method: &str, path: String, key: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap();
        let app = app.clone();
        async move {
            let res = app.oneshot(req).await.unwrap();
            let status = res.status().as_u16();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (status, _) = call("GET", "/portal/keys".into(), stale.key.expose_secret()).await;
    assert_eq!(status, 200, "the caller is cached as valid");
    store.revoke(&stale.record.id, "elsewhere").await.unwrap();

    let path = format!("/portal/keys/{}", last.record.id);
    for (method, path) in [("DELETE", path.clone()), ("POST", format!("{path}/revoke"))] {
        let (status, body) = call(method, path, stale.key.expose_secret()).await;
        assert_eq!(status, 409, "{method}: {body}");
        assert!(
            body.contains("last active key with the scope keys:self"),
            "{method}: {body}"
        );
    }
    let kept = store.get(&last.record.id).await.unwrap().unwrap();
    assert_eq!(kept.deleted_at, None);
    assert_eq!(
        store
            .get(&last.record.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        None
    );
    let (status, _) = call("GET", "/portal/keys".into(), last.key.expose_secret()).await;
    assert_eq!(status, 200, "the last key keeps working");
}
