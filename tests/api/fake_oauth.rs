//! Fakes of the OAuth providers (Salesforce, Zoho CRM, Google Drive, Dropbox) on loopback: each
//! is an authorization server (code exchange with PKCE, refresh, rotation, revocation) and the
//! provider's API in one fake HTTP server. Every request is checked (client credentials,
//! redirect URI, PKCE verifier, Bearer token, body shape); broken rules are collected as
//! problems for [`FakeOAuth::assert_no_problems`]. The browser step is played by the test
//! ([`FakeOAuth::authorize`] reads the authorization URL the service built and issues a code) or
//! by a real browser on the consent page at `GET /authorize`.
//!
//! This file holds the fake's state and what tests call; `fake_oauth_server.rs` the
//! authorization server, `fake_oauth_apis.rs` the providers' APIs.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::fake_http::{FakeServer, Request, Respond, ResponseTemplate};
use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[path = "fake_oauth_apis.rs"]
mod apis;
#[path = "fake_oauth_server.rs"]
mod server;

use server::{consent_page, issue_code};

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
    /// Drive: files in the trash (they still take updates, as Drive's do).
    trashed: HashSet<String>,
    /// Drive: ids handed out by generateIds.
    reserved: Vec<String>,
    /// The next uploads are stored, then their answers are lost.
    lose_upload_answers: usize,
    /// Salesforce: addresses refused once with UNABLE_TO_LOCK_ROW.
    locked_once: HashSet<String>,
    uploads: Vec<(String, String, Vec<u8>)>,
    /// Resumable uploads in progress, by session.
    sessions: HashMap<String, PartialUpload>,
    /// Drive: finished sessions and the file each made (a status query on one answers the file).
    finished_sessions: HashMap<String, String>,
    sessions_started: usize,
    /// Requests carrying a chunk so far (status queries not counted).
    chunk_requests: usize,
    /// (chunk request number, bytes kept): that request fails (see `break_chunk`).
    broken_chunk: Option<(usize, Option<usize>)>,
    /// (route, offset the request names, bytes it carries) of every session request.
    chunk_log: Vec<(String, u64, usize)>,
    problems: Vec<String>,
}

/// A resumable upload the fake holds: what it will write, and the bytes received so far.
#[derive(Default)]
pub(super) struct PartialUpload {
    /// Drive: the file the session updates, or the id a new one gets.
    pub file: Option<String>,
    pub received: Vec<u8>,
}

#[derive(Clone)]
pub struct FakeOAuth {
    pub kind: OKind,
    pub server: Arc<FakeServer>,
    state: Arc<Mutex<State>>,
    /// Zoho's watch channels.
    pub feeds: crate::fake_feeds::Feeds,
}

impl FakeOAuth {
    pub async fn start(kind: OKind) -> Self {
        let state = Arc::new(Mutex::new(State {
            expires_in: 3600,
            import_page_size: 3,
            lookup_requests: 0,
            ..State::default()
        }));
        let feeds = crate::fake_feeds::Feeds::default();
        let server = FakeServer::start_with(|uri| Responder {
            kind,
            uri,
            state: Arc::clone(&state),
            feeds: feeds.clone(),
        })
        .await;
        Self {
            kind,
            server: Arc::new(server),
            state,
            feeds,
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
    /// Drive: moves a file to the trash.
    pub fn trash(&self, id: &str) {
        self.state().trashed.insert(id.to_string());
    }

    /// The next `n` uploads are stored, then their answers are lost.
    pub fn lose_upload_answers(&self, n: usize) {
        self.state().lose_upload_answers = n;
    }

    /// Salesforce: each of these addresses is refused once with UNABLE_TO_LOCK_ROW.
    pub fn lock_once(&self, emails: &[&str]) {
        self.state()
            .locked_once
            .extend(emails.iter().map(|e| e.to_string()));
    }

    /// Files not in the trash.
    pub fn live_files(&self) -> BTreeMap<String, Vec<u8>> {
        let s = self.state();
        s.files
            .iter()
            .filter(|(id, _)| !s.trashed.contains(*id))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn uploads(&self) -> Vec<(String, String, Vec<u8>)> {
        self.state().uploads.clone()
    }

    /// The `n`th request carrying a chunk (from 1) fails: with `Some(k)` the fake keeps the
    /// chunk's first `k` bytes and answers 503; with `None` it keeps the whole chunk and the
    /// answer is lost.
    pub fn break_chunk(&self, n: usize, keep: Option<usize>) {
        self.state().broken_chunk = Some((n, keep));
    }

    /// (route, offset named, bytes carried) of every upload-session request.
    pub fn chunk_log(&self) -> Vec<(String, u64, usize)> {
        self.state().chunk_log.clone()
    }

    /// Upload sessions opened so far (finished or not).
    pub fn sessions_opened(&self) -> usize {
        self.state().sessions_started
    }

    /// What the fake found wrong so far, taken (a test that expects one checks and clears it).
    pub fn take_problems(&self) -> Vec<String> {
        std::mem::take(&mut self.state().problems)
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
    feeds: crate::fake_feeds::Feeds,
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
        if let Some(answer) = self.feeds.respond(&method, &path, request) {
            return answer;
        }
        match self.kind {
            OKind::Salesforce => self.salesforce(&mut s, request, &method, &path),
            OKind::Zoho => self.zoho(&mut s, request, &method, &path),
            OKind::GoogleDrive => self.drive(&mut s, request, &method, &path),
            OKind::Dropbox => self.dropbox(&mut s, request, &method, &path),
        }
    }
}
