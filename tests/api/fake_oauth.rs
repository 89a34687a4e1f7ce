//! Fakes of the OAuth providers (Salesforce, Zoho CRM, Google Drive, Dropbox) on loopback: each
//! is an authorization server (code exchange with PKCE, refresh, rotation, revocation) and the
//! provider's API in one wiremock server. Every request is checked (client credentials,
//! redirect URI, PKCE verifier, Bearer token, body shape); broken rules are collected as
//! problems for [`FakeOAuth::assert_no_problems`]. The browser step is played by the test:
//! [`FakeOAuth::authorize`] reads the authorization URL the service built and issues a code.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::any};

pub const CLIENT_ID: &str = "nexus-test-client";
pub const CLIENT_SECRET: &str = "FAKE-CLIENT-SECRET-0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OKind {
    Salesforce,
    Zoho,
    GoogleDrive,
    Dropbox,
}

impl OKind {
    pub const ALL: [OKind; 4] = [
        OKind::Salesforce,
        OKind::Zoho,
        OKind::GoogleDrive,
        OKind::Dropbox,
    ];

    fn flag(self) -> &'static str {
        match self {
            OKind::Salesforce => "salesforce",
            OKind::Zoho => "zoho",
            OKind::GoogleDrive => "google",
            OKind::Dropbox => "dropbox",
        }
    }

    pub fn token_path(self) -> &'static str {
        match self {
            OKind::Salesforce => "/services/oauth2/token",
            OKind::Zoho => "/oauth/v2/token",
            OKind::GoogleDrive => "/token",
            OKind::Dropbox => "/oauth2/token",
        }
    }

    pub fn revoke_path(self) -> &'static str {
        match self {
            OKind::Salesforce => "/services/oauth2/revoke",
            OKind::Zoho => "/oauth/v2/token/revoke",
            OKind::GoogleDrive => "/revoke",
            OKind::Dropbox => "/2/auth/token/revoke",
        }
    }

    pub fn pkce(self) -> bool {
        self != OKind::Zoho
    }

    pub fn scope(self) -> &'static str {
        match self {
            OKind::Salesforce => "api refresh_token",
            OKind::Zoho => "ZohoCRM.modules.contacts.ALL",
            OKind::GoogleDrive => "https://www.googleapis.com/auth/drive.file",
            OKind::Dropbox => "files.content.write files.content.read",
        }
    }
}

/// A contact held by the fake CRM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub email: String,
    pub fields: BTreeMap<String, String>,
    pub modified: String,
}

#[derive(Default)]
struct State {
    /// Code -> (PKCE challenge, redirect URI); removed when used.
    codes: HashMap<String, (Option<String>, String)>,
    valid_access: HashSet<String>,
    refresh_token: Option<String>,
    issued: usize,
    pub token_requests: Vec<BTreeMap<String, String>>,
    refresh_calls: usize,
    /// Refreshes answer invalid_grant.
    refuse_refresh: bool,
    /// Refreshes hand out a new refresh token (and invalidate the old one).
    rotate: bool,
    /// Code exchanges answer this error instead.
    exchange_error: Option<(u16, Value)>,
    expires_in: u64,
    refresh_delay: Option<Duration>,
    revoked: Vec<String>,
    /// Every access and refresh token handed out.
    secrets: Vec<String>,
    unauthorised_calls: usize,
    records: Vec<Record>,
    push_requests: Vec<(String, Value)>,
    refused: HashSet<String>,
    import_page_size: usize,
    /// Salesforce SOQL lookups answered.
    lookup_requests: usize,
    import_requests: usize,
    /// Import pages after this many never answer (a crash mid-import).
    hang_import_after: Option<usize>,
    /// Salesforce next-page links name this; links of an earlier one are expired.
    cursor_epoch: usize,
    files: BTreeMap<String, Vec<u8>>,
    uploads: Vec<(String, String, Vec<u8>)>,
    sessions: HashMap<String, Option<String>>,
    problems: Vec<String>,
}

#[derive(Clone)]
pub struct FakeOAuth {
    pub kind: OKind,
    pub server: Arc<MockServer>,
    state: Arc<Mutex<State>>,
}

impl FakeOAuth {
    pub async fn start(kind: OKind) -> Self {
        let server = MockServer::start().await;
        let state = Arc::new(Mutex::new(State {
            expires_in: 3600,
            import_page_size: 3,
            lookup_requests: 0,
            ..State::default()
        }));
        Mock::given(any())
            .respond_with(Responder {
                kind,
                uri: server.uri(),
                state: Arc::clone(&state),
            })
            .mount(&server)
            .await;
        Self {
            kind,
            server: Arc::new(server),
            state,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Settings pointing the service at this fake, with the OAuth app configured.
    pub fn settings(&self) -> Vec<(String, String)> {
        let uri = self.server.uri();
        let f = self.kind.flag();
        let mut settings = vec![
            (format!("--{f}-client-id"), CLIENT_ID.to_string()),
            (format!("--{f}-client-secret"), CLIENT_SECRET.to_string()),
            (format!("--{f}-authorize-url"), format!("{uri}/authorize")),
            (
                format!("--{f}-token-url"),
                format!("{uri}{}", self.kind.token_path()),
            ),
        ];
        match self.kind {
            OKind::GoogleDrive => settings.push(("--google-upload-base".into(), uri)),
            OKind::Dropbox => {
                settings.push(("--dropbox-api-base".into(), uri.clone()));
                settings.push(("--dropbox-content-base".into(), uri));
            }
            // Their API host comes from the token answer (instance_url, api_domain).
            OKind::Salesforce | OKind::Zoho => {}
        }
        settings
    }

    /// Plays the browser at the provider: checks the authorization URL and issues a code.
    pub fn authorize(&self, authorization_url: &str, redirect_uri: &str) -> (String, String) {
        issue_code(
            self.kind,
            &self.server.uri(),
            &self.state,
            authorization_url,
            Some(redirect_uri),
        )
        .unwrap_or_else(|problem| panic!("{problem}"))
    }

    /// Salesforce SOQL lookups answered.
    pub fn lookup_requests(&self) -> usize {
        self.state().lookup_requests
    }

    /// Records per import page.
    pub fn set_import_page_size(&self, size: usize) {
        self.state().import_page_size = size;
    }

    /// The fake's origin (its accounts server, for Zoho).
    pub fn server_uri(&self) -> String {
        self.server.uri()
    }

    pub fn set_expires_in(&self, secs: u64) {
        self.state().expires_in = secs;
    }
    pub fn rotate_refresh_tokens(&self) {
        self.state().rotate = true;
    }
    pub fn refuse_refresh(&self) {
        self.state().refuse_refresh = true;
    }
    pub fn fail_exchange(&self, status: u16, body: Value) {
        self.state().exchange_error = Some((status, body));
    }
    pub fn delay_refresh(&self, delay: Duration) {
        self.state().refresh_delay = Some(delay);
    }
    /// Every access token handed out so far stops working (401).
    pub fn expire_access_tokens(&self) {
        self.state().valid_access.clear();
    }
    pub fn refresh_calls(&self) -> usize {
        self.state().refresh_calls
    }
    pub fn token_requests(&self) -> Vec<BTreeMap<String, String>> {
        self.state().token_requests.clone()
    }
    pub fn current_refresh_token(&self) -> Option<String> {
        self.state().refresh_token.clone()
    }
    /// Every token handed out, and every authorization code issued.
    pub fn secrets(&self) -> Vec<String> {
        let s = self.state();
        s.secrets
            .iter()
            .cloned()
            .chain(s.codes.keys().cloned())
            .collect()
    }
    pub fn revoked(&self) -> Vec<String> {
        self.state().revoked.clone()
    }
    pub fn unauthorised_calls(&self) -> usize {
        self.state().unauthorised_calls
    }
    pub fn records(&self) -> Vec<Record> {
        self.state().records.clone()
    }
    pub fn add_records(&self, records: Vec<Record>) {
        let mut s = self.state();
        for mut r in records {
            r.id = format!("rec{:05}", s.records.len() + 1);
            s.records.push(r);
        }
    }
    pub fn refuse(&self, emails: &[&str]) {
        self.state()
            .refused
            .extend(emails.iter().map(|e| e.to_string()));
    }
    pub fn push_requests(&self) -> Vec<(String, Value)> {
        self.state().push_requests.clone()
    }
    pub fn import_requests(&self) -> usize {
        self.state().import_requests
    }
    /// Every Salesforce next-page link handed out so far stops working.
    pub fn expire_cursors(&self) {
        self.state().cursor_epoch += 1;
    }
    pub fn hang_import_after(&self, pages: usize) {
        self.state().hang_import_after = Some(pages);
    }
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        self.state().files.clone()
    }
    /// (method + kind, file id or path, bytes) of every upload.
    pub fn uploads(&self) -> Vec<(String, String, Vec<u8>)> {
        self.state().uploads.clone()
    }

    pub fn assert_no_problems(&self) {
        let problems = self.state().problems.clone();
        assert!(
            problems.is_empty(),
            "{:?} fake saw bad requests: {problems:#?}",
            self.kind
        );
    }
}

/// A CRM record as the test builds it.
pub fn record(email: &str, first: &str, last: &str, modified: &str) -> Record {
    Record {
        id: String::new(),
        email: email.into(),
        fields: [
            ("first".to_string(), first.to_string()),
            ("last".to_string(), last.to_string()),
        ]
        .into_iter()
        .collect(),
        modified: modified.into(),
    }
}

struct Responder {
    kind: OKind,
    uri: String,
    state: Arc<Mutex<State>>,
}

fn json_answer(status: u16, body: Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(body)
}

fn header<'a>(request: &'a Request, name: &str) -> &'a str {
    request
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let path = request.url.path().to_string();
        let method = request.method.as_str().to_string();
        if method == "POST" && path == self.kind.token_path() {
            return self.token(request);
        }
        if method == "POST" && path == self.kind.revoke_path() {
            return self.revoke(request);
        }
        if method == "GET" && path == "/authorize" {
            return consent_page(self.kind, &self.uri, &self.state, request);
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let auth = header(request, "authorization");
        let token = match self.kind {
            OKind::Zoho => auth.strip_prefix("Zoho-oauthtoken "),
            _ => auth.strip_prefix("Bearer "),
        };
        if !token.is_some_and(|t| s.valid_access.contains(t)) {
            s.unauthorised_calls += 1;
            return match self.kind {
                OKind::Salesforce => json_answer(
                    401,
                    json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]),
                ),
                OKind::Zoho => json_answer(
                    401,
                    json!({"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token", "status": "error"}),
                ),
                OKind::GoogleDrive => json_answer(
                    401,
                    json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}}),
                ),
                OKind::Dropbox => json_answer(
                    401,
                    json!({"error_summary": "expired_access_token/", "error": {".tag": "expired_access_token"}}),
                ),
            };
        }
        match self.kind {
            OKind::Salesforce => self.salesforce(&mut s, request, &method, &path),
            OKind::Zoho => self.zoho(&mut s, request, &method, &path),
            OKind::GoogleDrive => self.drive(&mut s, request, &method, &path),
            OKind::Dropbox => self.dropbox(&mut s, request, &method, &path),
        }
    }
}

impl Responder {
    fn token(&self, request: &Request) -> ResponseTemplate {
        let form: BTreeMap<String, String> = url::form_urlencoded::parse(&request.body)
            .into_owned()
            .collect();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.token_requests.push(form.clone());
        if form.get("client_id").map(String::as_str) != Some(CLIENT_ID)
            || form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
        {
            s.problems.push(format!(
                "token request without the client credentials: {:?}",
                form.keys()
            ));
            return json_answer(401, json!({"error": "invalid_client"}));
        }
        if header(request, "content-type") != "application/x-www-form-urlencoded" {
            s.problems.push("token request not form encoded".into());
        }
        match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => {
                if let Some((status, body)) = s.exchange_error.clone() {
                    return json_answer(status, body);
                }
                let code = form.get("code").cloned().unwrap_or_default();
                let Some((challenge, redirect)) = s.codes.remove(&code) else {
                    return json_answer(
                        400,
                        json!({"error": "invalid_grant", "error_description": "code not valid"}),
                    );
                };
                if form.get("redirect_uri") != Some(&redirect) {
                    s.problems
                        .push("redirect_uri differs from the authorization request".into());
                    return json_answer(400, json!({"error": "invalid_grant"}));
                }
                if let Some(challenge) = challenge {
                    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                    if s256(&verifier) != challenge {
                        s.problems
                            .push("PKCE verifier does not match the challenge".into());
                        return json_answer(
                            400,
                            json!({"error": "invalid_grant", "error_description": "PKCE"}),
                        );
                    }
                }
                let refresh = format!("rt-{}", uuid::Uuid::new_v4().simple());
                s.refresh_token = Some(refresh.clone());
                self.issue(&mut s, Some(refresh))
            }
            Some("refresh_token") => {
                s.refresh_calls += 1;
                let delay = s.refresh_delay;
                let answer = if s.refuse_refresh {
                    json_answer(
                        400,
                        json!({"error": "invalid_grant", "error_description": "token has been revoked"}),
                    )
                } else if form.get("refresh_token") != s.refresh_token.as_ref() {
                    s.problems
                        .push("refresh with a refresh token that is not the current one".into());
                    json_answer(400, json!({"error": "invalid_grant"}))
                } else if s.rotate {
                    let refresh = format!("rt-{}", uuid::Uuid::new_v4().simple());
                    s.refresh_token = Some(refresh.clone());
                    self.issue(&mut s, Some(refresh))
                } else {
                    self.issue(&mut s, None)
                };
                match delay {
                    Some(delay) => answer.set_delay(delay),
                    None => answer,
                }
            }
            other => {
                s.problems.push(format!("grant_type {other:?}"));
                json_answer(400, json!({"error": "unsupported_grant_type"}))
            }
        }
    }

    fn issue(&self, s: &mut State, refresh: Option<String>) -> ResponseTemplate {
        let access = format!("at-{}", uuid::Uuid::new_v4().simple());
        s.valid_access.insert(access.clone());
        s.secrets.push(access.clone());
        s.secrets.extend(refresh.clone());
        let mut body = json!({"access_token": access, "token_type": "Bearer"});
        if self.kind != OKind::Salesforce {
            body["expires_in"] = json!(s.expires_in);
        }
        if let Some(refresh) = refresh {
            body["refresh_token"] = json!(refresh);
        }
        match self.kind {
            OKind::Salesforce => {
                body["instance_url"] = json!(self.uri);
                body["issued_at"] = json!("1732400000000");
            }
            OKind::Zoho => body["api_domain"] = json!(self.uri),
            _ => {}
        }
        json_answer(200, body)
    }

    fn revoke(&self, request: &Request) -> ResponseTemplate {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let token = match self.kind {
            OKind::Dropbox => {
                let token = header(request, "authorization")
                    .trim_start_matches("Bearer ")
                    .to_string();
                // Dropbox authenticates the call with the token it revokes.
                if !s.valid_access.contains(&token) {
                    s.unauthorised_calls += 1;
                    return json_answer(401, json!({"error_summary": "expired_access_token/"}));
                }
                s.valid_access.remove(&token);
                token
            }
            OKind::Zoho => request
                .url
                .query_pairs()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default(),
            _ => url::form_urlencoded::parse(&request.body)
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default(),
        };
        s.revoked.push(token);
        json_answer(200, json!({}))
    }

    fn next_id(s: &State) -> String {
        format!("rec{:05}", s.records.len() + 1)
    }

    fn upsert(s: &mut State, email: &str, fields: BTreeMap<String, String>) -> (String, bool) {
        if let Some(r) = s
            .records
            .iter_mut()
            .find(|r| r.email.eq_ignore_ascii_case(email))
        {
            r.fields.extend(fields);
            return (r.id.clone(), false);
        }
        let id = Self::next_id(s);
        s.records.push(Record {
            id: id.clone(),
            email: email.into(),
            fields,
            modified: "2024-01-01T00:00:00Z".into(),
        });
        (id, true)
    }

    fn import_page(&self, s: &mut State, offset: usize) -> Option<(Vec<Record>, bool)> {
        s.import_requests += 1;
        if s.hang_import_after.is_some_and(|n| s.import_requests > n) {
            return None;
        }
        let page: Vec<Record> = s
            .records
            .iter()
            .skip(offset)
            .take(s.import_page_size)
            .cloned()
            .collect();
        let more = offset + page.len() < s.records.len();
        Some((page, more))
    }

    fn salesforce(
        &self,
        s: &mut State,
        request: &Request,
        method: &str,
        path: &str,
    ) -> ResponseTemplate {
        let base = "/services/data/v59.0";
        match (method, path) {
            ("GET", p) if p == format!("{base}/query") => {
                // Salesforce refuses request URIs longer than 16,384 bytes.
                let uri_len =
                    request.url.path().len() + request.url.query().map_or(0, |q| q.len() + 1);
                if uri_len > 16_384 {
                    s.problems.push(format!("request URI of {uri_len} bytes"));
                    return json_answer(
                        414,
                        json!([{"message": "URI Too Long", "errorCode": "URI_TOO_LONG"}]),
                    );
                }
                s.lookup_requests += 1;
                let q = request
                    .url
                    .query_pairs()
                    .find(|(k, _)| k == "q")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                if let Some(list) = q
                    .split_once("Email IN (")
                    .map(|(_, rest)| rest.split(')').next().unwrap_or(""))
                {
                    let emails: Vec<String> = list
                        .split(',')
                        .map(|e| e.trim().trim_matches('\'').replace("\\'", "'"))
                        .collect();
                    if emails.len() > 200 {
                        s.problems
                            .push(format!("SOQL lookup of {} emails", emails.len()));
                    }
                    let records: Vec<Value> = s
                        .records
                        .iter()
                        .filter(|r| emails.iter().any(|e| e.eq_ignore_ascii_case(&r.email)))
                        .map(|r| json!({"attributes": {"type": "Contact"}, "Id": r.id, "Email": r.email}))
                        .collect();
                    return json_answer(
                        200,
                        json!({"totalSize": records.len(), "done": true, "records": records}),
                    );
                }
                if !q.contains("FROM Contact") {
                    s.problems.push(format!("unexpected SOQL {q}"));
                }
                self.salesforce_page(s, 0)
            }
            ("GET", p) if p.starts_with(&format!("{base}/query/next-")) => {
                let mut parts = p.rsplit('-');
                let offset = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let epoch: usize = parts
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(usize::MAX);
                if epoch != s.cursor_epoch {
                    s.import_requests += 1;
                    return json_answer(
                        400,
                        json!([{"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}]),
                    );
                }
                self.salesforce_page(s, offset)
            }
            ("GET", p) if p == format!("{base}/limits") => json_answer(200, json!({})),
            (m @ ("POST" | "PATCH"), p) if p == format!("{base}/composite/sobjects") => {
                let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
                s.push_requests.push((m.to_string(), body.clone()));
                if body["allOrNone"] != false {
                    s.problems
                        .push("composite request without allOrNone:false".into());
                }
                let records = body["records"].as_array().cloned().unwrap_or_default();
                if records.is_empty() || records.len() > 200 {
                    s.problems
                        .push(format!("composite request of {} records", records.len()));
                }
                let mut results = Vec::new();
                for r in records {
                    if r["attributes"]["type"] != "Contact" {
                        s.problems.push(format!("record without Contact type: {r}"));
                    }
                    let email = r["Email"].as_str().unwrap_or_default().to_string();
                    if s.refused.contains(&email) {
                        results.push(json!({"success": false, "errors": [{"statusCode": "INVALID_EMAIL_ADDRESS", "message": "Email: invalid email address", "fields": ["Email"]}]}));
                        continue;
                    }
                    let fields: BTreeMap<String, String> =
                        ["FirstName", "LastName", "Phone", "Title"]
                            .iter()
                            .filter_map(|k| r[*k].as_str().map(|v| (k.to_string(), v.to_string())))
                            .collect();
                    if m == "PATCH" {
                        let id = r["Id"].as_str().unwrap_or_default();
                        match s.records.iter_mut().find(|x| x.id == id) {
                            Some(x) => {
                                x.fields.extend(fields);
                                results.push(json!({"id": id, "success": true, "errors": []}));
                            }
                            None => {
                                s.problems.push(format!("update of unknown id {id}"));
                                results.push(json!({"success": false, "errors": [{"statusCode": "ENTITY_IS_DELETED", "message": "gone"}]}));
                            }
                        }
                    } else {
                        if r.get("Id").is_some() {
                            s.problems.push("create with an Id".into());
                        }
                        if s.records
                            .iter()
                            .any(|x| x.email.eq_ignore_ascii_case(&email))
                        {
                            s.problems
                                .push(format!("duplicate contact created for {email}"));
                        }
                        let (id, _) = Self::upsert(s, &email, fields);
                        results.push(json!({"id": id, "success": true, "errors": []}));
                    }
                }
                json_answer(200, Value::Array(results))
            }
            _ => {
                s.problems.push(format!("unexpected {method} {path}"));
                json_answer(
                    404,
                    json!([{"message": "not found", "errorCode": "NOT_FOUND"}]),
                )
            }
        }
    }

    fn salesforce_page(&self, s: &mut State, offset: usize) -> ResponseTemplate {
        let Some((page, more)) = self.import_page(s, offset) else {
            return ResponseTemplate::new(200).set_delay(Duration::from_secs(3600));
        };
        let next = offset + page.len();
        let records: Vec<Value> = page
            .iter()
            .map(|r| {
                json!({"attributes": {"type": "Contact"}, "Id": r.id, "Email": r.email,
                "FirstName": r.fields.get("first"), "LastName": r.fields.get("last"),
                "Phone": null, "Title": null,
                "LastModifiedDate": r.modified.replace('Z', ".000+0000")})
            })
            .collect();
        let mut body = json!({"totalSize": s.records.len(), "done": !more, "records": records});
        if more {
            body["nextRecordsUrl"] = json!(format!(
                "/services/data/v59.0/query/next-{}-{next}",
                s.cursor_epoch
            ));
        }
        json_answer(200, body)
    }

    fn zoho(&self, s: &mut State, request: &Request, method: &str, path: &str) -> ResponseTemplate {
        match (method, path) {
            ("POST", "/crm/v2/Contacts/upsert") => {
                let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
                s.push_requests.push((method.into(), body.clone()));
                if body["duplicate_check_fields"] != json!(["Email"]) {
                    s.problems
                        .push("upsert without duplicate_check_fields [Email]".into());
                }
                let data = body["data"].as_array().cloned().unwrap_or_default();
                if data.is_empty() || data.len() > 100 {
                    s.problems.push(format!("upsert of {} records", data.len()));
                }
                let mut results = Vec::new();
                for r in data {
                    let email = r["Email"].as_str().unwrap_or_default().to_string();
                    if r["Last_Name"].as_str().is_none_or(str::is_empty) {
                        s.problems.push(format!("record without Last_Name: {r}"));
                    }
                    if s.refused.contains(&email) {
                        results.push(json!({"code": "INVALID_DATA", "details": {"api_name": "Email"}, "message": "invalid data", "status": "error"}));
                        continue;
                    }
                    let fields: BTreeMap<String, String> =
                        ["First_Name", "Last_Name", "Phone", "Title", "Account_Name"]
                            .iter()
                            .filter_map(|k| r[*k].as_str().map(|v| (k.to_string(), v.to_string())))
                            .collect();
                    let (id, created) = Self::upsert(s, &email, fields);
                    results.push(
                        json!({"code": "SUCCESS", "action": if created {"insert"} else {"update"},
                        "details": {"id": id}, "message": "record added", "status": "success"}),
                    );
                }
                json_answer(200, json!({"data": results}))
            }
            ("GET", "/crm/v2/Contacts") => {
                let param = |name: &str| {
                    request
                        .url
                        .query_pairs()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.into_owned())
                };
                let page: usize = param("page").and_then(|v| v.parse().ok()).unwrap_or(1);
                let size = s.import_page_size;
                // As in current API versions: page numbers reach the first 2,000 records;
                // past them only the page token works.
                let offset = match param("page_token") {
                    Some(token) => match token.strip_prefix("tok-").and_then(|o| o.parse().ok()) {
                        Some(offset) => offset,
                        None => {
                            s.problems.push(format!("unknown page token {token}"));
                            return json_answer(
                                400,
                                json!({"code": "INVALID_DATA", "status": "error", "message": "invalid page_token"}),
                            );
                        }
                    },
                    None if (page - 1) * size >= 2000 => {
                        return json_answer(
                            400,
                            json!({"code": "LIMIT_REACHED", "status": "error",
                                "message": "Limit of 2000 reached for the page param; use page_token"}),
                        );
                    }
                    None => (page - 1) * size,
                };
                let Some((records, more)) = self.import_page(s, offset) else {
                    return ResponseTemplate::new(200).set_delay(Duration::from_secs(3600));
                };
                if records.is_empty() {
                    return ResponseTemplate::new(204);
                }
                let data: Vec<Value> = records
                    .iter()
                    .map(|r| json!({"id": r.id, "Email": r.email, "First_Name": r.fields.get("first"),
                        "Last_Name": r.fields.get("last"), "Account_Name": {"name": "Zoho Corp", "id": "1"},
                        "Modified_Time": r.modified.replace('Z', "+00:00")}))
                    .collect();
                json_answer(
                    200,
                    json!({"data": data, "info": {"per_page": size, "count": data.len(), "page": page,
                        "more_records": more,
                        "next_page_token": if more { Value::from(format!("tok-{}", offset + data.len())) } else { Value::Null }}}),
                )
            }
            _ => {
                s.problems.push(format!("unexpected {method} {path}"));
                json_answer(
                    404,
                    json!({"code": "INVALID_URL_PATTERN", "status": "error", "message": "not found"}),
                )
            }
        }
    }

    fn drive(
        &self,
        s: &mut State,
        request: &Request,
        method: &str,
        path: &str,
    ) -> ResponseTemplate {
        let upload_type = request
            .url
            .query_pairs()
            .find(|(k, _)| k == "uploadType")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let file_id = path
            .strip_prefix("/upload/drive/v3/files/")
            .map(str::to_string);
        match (method, path, upload_type.as_str()) {
            ("POST", "/upload/drive/v3/files", "multipart") | ("PATCH", _, "multipart") => {
                if file_id.as_ref().is_some_and(|id| !s.files.contains_key(id)) {
                    return json_answer(
                        404,
                        json!({"error": {"code": 404, "message": "File not found."}}),
                    );
                }
                let Some((metadata, content)) = multipart(request) else {
                    s.problems.push("malformed multipart body".into());
                    return json_answer(
                        400,
                        json!({"error": {"code": 400, "message": "bad multipart"}}),
                    );
                };
                if metadata["name"] != "contacts.csv" || metadata["mimeType"] != "text/csv" {
                    s.problems.push(format!("metadata {metadata}"));
                }
                if content.len() > 5 * 1024 * 1024 {
                    s.problems.push("multipart upload above 5 MB".into());
                }
                let id = file_id.unwrap_or_else(|| format!("file{}", s.files.len() + 1));
                s.uploads
                    .push((format!("{method} multipart"), id.clone(), content.clone()));
                s.files.insert(id.clone(), content);
                json_answer(200, json!({"id": id}))
            }
            ("POST", "/upload/drive/v3/files", "resumable") | ("PATCH", _, "resumable") => {
                if file_id.as_ref().is_some_and(|id| !s.files.contains_key(id)) {
                    return json_answer(
                        404,
                        json!({"error": {"code": 404, "message": "File not found."}}),
                    );
                }
                let declared: usize = header(request, "x-upload-content-length")
                    .parse()
                    .unwrap_or(0);
                if declared <= 5 * 1024 * 1024 {
                    s.problems
                        .push(format!("resumable upload of {declared} bytes"));
                }
                let session = format!("s{}", s.sessions.len() + 1);
                s.sessions.insert(session.clone(), file_id);
                ResponseTemplate::new(200).insert_header(
                    "Location",
                    format!("{}/upload/session/{session}?upload_id=x", self.uri).as_str(),
                )
            }
            ("PUT", p, _) if p.starts_with("/upload/session/") => {
                let session = p.trim_start_matches("/upload/session/").to_string();
                let Some(file_id) = s.sessions.remove(&session) else {
                    s.problems.push("upload to an unknown session".into());
                    return json_answer(404, json!({}));
                };
                let id = file_id.unwrap_or_else(|| format!("file{}", s.files.len() + 1));
                let content = request.body.clone();
                s.uploads
                    .push(("PUT resumable".into(), id.clone(), content.clone()));
                s.files.insert(id.clone(), content);
                json_answer(200, json!({"id": id}))
            }
            _ => {
                s.problems.push(format!(
                    "unexpected {method} {path}?uploadType={upload_type}"
                ));
                json_answer(404, json!({"error": {"code": 404, "message": "not found"}}))
            }
        }
    }

    fn dropbox(
        &self,
        s: &mut State,
        request: &Request,
        method: &str,
        path: &str,
    ) -> ResponseTemplate {
        if (method, path) != ("POST", "/2/files/upload") {
            s.problems.push(format!("unexpected {method} {path}"));
            return json_answer(404, json!({"error_summary": "not_found/"}));
        }
        let raw_arg = header(request, "dropbox-api-arg");
        if !raw_arg.is_ascii() || raw_arg.is_empty() {
            s.problems
                .push("Dropbox-API-Arg missing or not ASCII".into());
        }
        let arg: Value = serde_json::from_str(raw_arg).unwrap_or(Value::Null);
        if arg["mode"] != "overwrite" || arg["autorename"] != false {
            s.problems.push(format!("upload arguments {arg}"));
        }
        if header(request, "content-type") != "application/octet-stream" {
            s.problems
                .push("upload not application/octet-stream".into());
        }
        let file = arg["path"].as_str().unwrap_or_default().to_string();
        let content = request.body.clone();
        s.uploads
            .push(("POST upload".into(), file.clone(), content.clone()));
        s.files.insert(file.clone(), content);
        json_answer(
            200,
            json!({"name": "contacts.csv", "path_display": file, "id": "id:abc"}),
        )
    }
}

/// (metadata JSON, file bytes) of a `multipart/related` body.
fn multipart(request: &Request) -> Option<(Value, Vec<u8>)> {
    let content_type = header(request, "content-type");
    let boundary = content_type.strip_prefix("multipart/related; boundary=")?;
    let body = &request.body;
    let delimiter = format!("--{boundary}\r\n");
    let closing = format!("\r\n--{boundary}--\r\n");
    let rest = body.strip_prefix(delimiter.as_bytes())?;
    let rest = rest.strip_suffix(closing.as_bytes())?;
    let separator = format!("\r\n--{boundary}\r\n");
    let split = find(rest, separator.as_bytes())?;
    let (first, second) = (&rest[..split], &rest[split + separator.len()..]);
    let metadata_at = find(first, b"\r\n\r\n")? + 4;
    let metadata: Value = serde_json::from_slice(&first[metadata_at..]).ok()?;
    let content_at = find(second, b"\r\n\r\n")? + 4;
    if !second.starts_with(b"Content-Type: text/csv") {
        return None;
    }
    Some((metadata, second[content_at..].to_vec()))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Checks an authorization URL the service built, as the provider would, and issues a code:
/// (code, state). `redirect_uri`, when given, is the only one accepted.
fn issue_code(
    kind: OKind,
    uri: &str,
    state: &Mutex<State>,
    authorization_url: &str,
    redirect_uri: Option<&str>,
) -> Result<(String, String), String> {
    macro_rules! ensure {
        ($ok:expr, $($why:tt)*) => { if !$ok { return Err(format!($($why)*)); } };
    }
    let url = url::Url::parse(authorization_url).map_err(|e| e.to_string())?;
    ensure!(
        authorization_url.starts_with(&format!("{uri}/authorize?")),
        "{authorization_url}"
    );
    let q: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    let get = |k: &str| q.get(k).map(String::as_str);
    ensure!(get("response_type") == Some("code"), "response_type");
    ensure!(get("client_id") == Some(CLIENT_ID), "client_id");
    let redirect = get("redirect_uri").unwrap_or_default().to_string();
    match redirect_uri {
        Some(expected) => ensure!(redirect == expected, "redirect_uri {redirect}"),
        None => ensure!(
            redirect.ends_with("/integrations/oauth/callback"),
            "redirect_uri {redirect}"
        ),
    }
    ensure!(
        get("scope") == Some(kind.scope()),
        "scopes {:?}",
        get("scope")
    );
    let flow_state = get("state").unwrap_or_default().to_string();
    ensure!(flow_state.len() >= 32, "state too short: {flow_state:?}");
    match kind {
        OKind::GoogleDrive | OKind::Zoho => {
            ensure!(get("access_type") == Some("offline"), "access_type");
            ensure!(get("prompt") == Some("consent"), "prompt");
        }
        OKind::Dropbox => ensure!(
            get("token_access_type") == Some("offline"),
            "token_access_type"
        ),
        OKind::Salesforce => {}
    }
    let challenge = if kind.pkce() {
        ensure!(
            get("code_challenge_method") == Some("S256"),
            "code_challenge_method"
        );
        Some(get("code_challenge").unwrap_or_default().to_string())
    } else {
        ensure!(!q.contains_key("code_challenge"), "unexpected PKCE");
        None
    };
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    s.issued += 1;
    let code = format!("code-{}-{}", s.issued, uuid::Uuid::new_v4().simple());
    s.codes.insert(code.clone(), (challenge, redirect));
    s.secrets.push(code.clone());
    Ok((code, flow_state))
}

/// `GET /authorize` in a real browser: the provider's consent page, whose "Allow" sends the
/// browser back to the redirect URI with a code.
fn consent_page(
    kind: OKind,
    uri: &str,
    state: &Mutex<State>,
    request: &Request,
) -> ResponseTemplate {
    // wiremock names every request's host `localhost`: the URL as the browser opened it.
    let opened = format!(
        "{uri}{}?{}",
        request.url.path(),
        request.url.query().unwrap_or_default()
    );
    match issue_code(kind, uri, state, &opened, None) {
        Ok((code, flow_state)) => {
            let q: BTreeMap<String, String> = request.url.query_pairs().into_owned().collect();
            let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
            let html = format!(
                "<!doctype html><html lang=\"en\"><head><title>Allow Nexus Cards?</title></head><body>\
                 <h1>Allow Nexus Cards to use your {kind:?} account?</h1>\
                 <form method=\"get\" action=\"{redirect}\">\
                 <input type=\"hidden\" name=\"code\" value=\"{code}\">\
                 <input type=\"hidden\" name=\"state\" value=\"{flow_state}\">\
                 <button type=\"submit\">Allow</button></form></body></html>"
            );
            ResponseTemplate::new(200).set_body_raw(html, "text/html; charset=utf-8")
        }
        Err(problem) => {
            state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .problems
                .push(format!("authorize page: {problem}"));
            ResponseTemplate::new(400).set_body_string(problem)
        }
    }
}
