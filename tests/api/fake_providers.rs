//! Fakes of the four push providers on loopback (fake_http.rs). Each checks what it receives (path,
//! auth header, body shape, batch size), answers in the provider's own shape, and records every
//! push so tests can assert what arrived. Behaviours a test can switch on: scripted answers for
//! the next pushes (429 with Retry-After, 5xx, 401), refused records, a sliding-window rate
//! limit, a delay, and pushes that never answer (a crash mid-request).

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::fake_feeds::Feeds;
use crate::fake_http::{FakeServer, Hold, HoldPoint, Request, Respond, ResponseTemplate};
use base64::Engine;
use serde_json::{Value, json};

pub const HUBSPOT_TOKEN: &str = "pat-na1-FAKEHUBSPOTTOKEN-0123456789";
pub const MAILCHIMP_KEY: &str = "0123456789abcdefFAKEMAILCHIMP-us6";
pub const MAILCHIMP_LIST: &str = "list42";
pub const SENDGRID_KEY: &str = "SG.FAKESENDGRIDKEY.0123456789";
pub const ZAPIER_HOOK_PATH: &str = "/hooks/catch/123456/FAKEZAPHOOKSECRET/";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hubspot,
    Mailchimp,
    Sendgrid,
    Zapier,
}

impl Kind {
    pub fn max_batch(self) -> usize {
        match self {
            Kind::Hubspot | Kind::Zapier => 100,
            Kind::Mailchimp => 500,
            Kind::Sendgrid => 10_000,
        }
    }
}

/// Key/value pairs of a connect request.
pub type Fields = Vec<(String, String)>;

/// One push the fake accepted (2xx).
#[derive(Debug, Clone)]
pub struct Push {
    pub emails: Vec<String>,
    pub body: Value,
    /// The `Idempotency-Key` header, if the push had one.
    pub idempotency_key: Option<String>,
}

#[derive(Default)]
struct State {
    /// Answers for the next push requests, before normal behaviour.
    scripted: VecDeque<ResponseTemplate>,
    /// Pushes answered normally before the scripted answers start.
    script_after: usize,
    refused: HashSet<String>,
    limit: Option<(usize, Duration)>,
    window: VecDeque<Instant>,
    rejected_429: usize,
    push_requests: usize,
    pushes: Vec<Push>,
    /// Pushes after this many accepted ones never answer.
    hang_after: Option<usize>,
    /// Every n-th push request fails with 503 (a provider that is flaky, not down).
    fail_every: Option<usize>,
    delay: Option<Duration>,
    verify_calls: usize,
    sendgrid_jobs: Vec<(String, u64, bool)>,
    /// SendGrid: the next import-status polls answer 503.
    failing_polls: usize,
    problems: Vec<String>,
    /// Contacts held at the provider, for imports: (email, first name, last name, modified).
    remote: Vec<(String, String, String, String)>,
    import_requests: usize,
    /// HubSpot batch reads answered.
    batch_reads: usize,
    /// Contacts per import page; 0 means [`IMPORT_PAGE`].
    import_page: usize,
    /// HubSpot: a batch holding a refused address is refused whole (400), as the real batch
    /// upsert by email does.
    whole_batch_refusals: bool,
    /// Mailchimp: members of the audience that are not subscribed (email, status).
    unsubscribed: Vec<(String, String)>,
    /// The next accepted pushes are acted on, then their answers are lost (the connection
    /// drops), as a provider that timed out after doing the work.
    lose_answers: usize,
}

/// Contacts per import page (small, so a test crosses pages).
pub const IMPORT_PAGE: usize = 3;

#[derive(Clone)]
pub struct FakeProvider {
    pub kind: Kind,
    pub server: Arc<FakeServer>,
    state: Arc<Mutex<State>>,
    /// HubSpot's account info, Mailchimp's list webhooks.
    pub feeds: Feeds,
}

impl FakeProvider {
    pub async fn start(kind: Kind) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let feeds = Feeds::default();
        let server = FakeServer::start(Responder {
            kind,
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

    /// The settings pointing the service at this fake.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let uri = self.server.uri();
        match self.kind {
            Kind::Hubspot => vec![("--hubspot-api-base", uri)],
            Kind::Mailchimp => vec![("--mailchimp-api-base", uri)],
            Kind::Sendgrid => vec![("--sendgrid-api-base", uri)],
            Kind::Zapier => vec![("--zapier-hook-base", format!("{uri}/hooks/catch/"))],
        }
    }

    /// Working credentials and settings for ConnectIntegration.
    pub fn credentials(&self) -> (Fields, Fields) {
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        match self.kind {
            Kind::Hubspot => (vec![pair("accessToken", HUBSPOT_TOKEN)], vec![]),
            Kind::Mailchimp => (
                vec![pair("apiKey", MAILCHIMP_KEY)],
                vec![pair("listId", MAILCHIMP_LIST)],
            ),
            Kind::Sendgrid => (
                vec![pair("apiKey", SENDGRID_KEY)],
                vec![pair("listIds", "l1,l2")],
            ),
            Kind::Zapier => (
                vec![pair(
                    "webhookUrl",
                    &format!("{}{ZAPIER_HOOK_PATH}", self.server.uri()),
                )],
                vec![],
            ),
        }
    }

    pub fn script(&self, answers: Vec<ResponseTemplate>) {
        self.state().scripted.extend(answers);
    }

    /// Scripted answers that start after `passed` more pushes are answered normally.
    pub fn script_after(&self, passed: usize, answers: Vec<ResponseTemplate>) {
        let mut state = self.state();
        state.script_after = passed;
        state.scripted.extend(answers);
    }

    /// SendGrid: the next `n` import-status polls answer 503 (the import itself goes on).
    pub fn fail_polls(&self, n: usize) {
        self.state().failing_polls = n;
    }

    /// SendGrid: PUTs of contacts (each starts an import job).
    pub fn sendgrid_imports(&self) -> usize {
        self.state().sendgrid_jobs.len()
    }

    pub fn refuse(&self, emails: &[&str]) {
        self.state()
            .refused
            .extend(emails.iter().map(|e| e.to_string()));
    }

    /// HubSpot and SendGrid: a batch naming a refused address is refused whole with 400.
    pub fn refuse_whole_batches(&self) {
        self.state().whole_batch_refusals = true;
    }

    /// Mailchimp: audience members who are not subscribed (never to be imported).
    pub fn set_unsubscribed(&self, members: &[(&str, &str)]) {
        self.state().unsubscribed = members
            .iter()
            .map(|(e, status)| (e.to_string(), status.to_string()))
            .collect();
    }

    /// The next `n` accepted pushes are acted on and recorded, but their answers never arrive.
    pub fn lose_answers(&self, n: usize) {
        self.state().lose_answers = n;
    }

    pub fn enforce_limit(&self, requests: usize, per: Duration) {
        self.state().limit = Some((requests, per));
    }

    /// Every n-th push request answers 503.
    pub fn fail_every(&self, n: usize) {
        self.state().fail_every = Some(n.max(1));
    }

    /// Stops the failures `fail_every` started.
    pub fn recover(&self) {
        self.state().fail_every = None;
    }

    pub fn hang_after(&self, accepted: usize) {
        self.state().hang_after = Some(accepted);
    }

    /// Holds every push request after the first `passed` ones at `point` (see `fake_http`):
    /// the test decides when the provider sees them, or when their answers come.
    pub fn hold_pushes(&self, point: HoldPoint, passed: usize) -> Hold {
        let kind = self.kind;
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        self.server.hold(point, move |request| {
            is_push(kind, request)
                && seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= passed
        })
    }

    /// Answers every push `delay` late (latency, as real providers have; for ordering use
    /// [`FakeProvider::hold_pushes`]).
    pub fn delay_pushes(&self, delay: Duration) {
        self.state().delay = Some(delay);
    }

    pub fn pushes(&self) -> Vec<Push> {
        self.state().pushes.clone()
    }

    /// Every email accepted, in order (with repeats, if any were sent twice).
    pub fn pushed_emails(&self) -> Vec<String> {
        self.pushes().into_iter().flat_map(|p| p.emails).collect()
    }

    /// Accepted pushes carrying a contact whose email starts with `prefix` (one user's).
    pub fn pushes_of(&self, prefix: &str) -> usize {
        self.state()
            .pushes
            .iter()
            .filter(|p| p.emails.iter().any(|e| e.starts_with(prefix)))
            .count()
    }

    pub fn push_requests(&self) -> usize {
        self.state().push_requests
    }

    pub fn rejected_429(&self) -> usize {
        self.state().rejected_429
    }

    /// Contacts the provider holds, for imports: (email, first, last, modified RFC 3339).
    pub fn set_remote(&self, contacts: &[(&str, &str, &str, &str)]) {
        self.state().remote = contacts
            .iter()
            .map(|(e, f, l, m)| (e.to_string(), f.to_string(), l.to_string(), m.to_string()))
            .collect();
    }

    pub fn set_import_page(&self, contacts: usize) {
        self.state().import_page = contacts;
    }

    /// HubSpot batch reads (the contacts a webhook named) answered.
    pub fn batch_reads(&self) -> usize {
        self.state().batch_reads
    }

    pub fn import_requests(&self) -> usize {
        self.state().import_requests
    }

    pub fn verify_calls(&self) -> usize {
        self.state().verify_calls
    }

    /// Fails the test if any request broke the provider's rules.
    pub fn assert_no_problems(&self) {
        let problems = self.state().problems.clone();
        assert!(
            problems.is_empty(),
            "{:?} fake saw bad requests: {problems:#?}",
            self.kind
        );
    }
}

/// Whether `request` is a push of contacts to the provider of `kind`.
fn is_push(kind: Kind, request: &Request) -> bool {
    let (method, path) = (request.method.as_str(), request.url.path());
    match kind {
        Kind::Hubspot => method == "POST" && path == "/crm/v3/objects/contacts/batch/upsert",
        Kind::Mailchimp => method == "POST" && path == format!("/3.0/lists/{MAILCHIMP_LIST}"),
        Kind::Sendgrid => method == "PUT" && path == "/v3/marketing/contacts",
        Kind::Zapier => {
            method == "POST"
                && path == ZAPIER_HOOK_PATH
                && serde_json::from_slice::<Value>(&request.body)
                    .is_ok_and(|body| body["event"] == "contacts")
        }
    }
}

struct Responder {
    kind: Kind,
    state: Arc<Mutex<State>>,
    feeds: Feeds,
}

fn error(status: u16, body: Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(body)
}

fn header<'a>(request: &'a Request, name: &str) -> &'a str {
    request
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

impl Responder {
    fn authorised(&self, request: &Request) -> bool {
        let auth = header(request, "authorization");
        match self.kind {
            Kind::Hubspot => auth == format!("Bearer {HUBSPOT_TOKEN}"),
            Kind::Sendgrid => auth == format!("Bearer {SENDGRID_KEY}"),
            Kind::Mailchimp => auth
                .strip_prefix("Basic ")
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|raw| String::from_utf8(raw).ok())
                .is_some_and(|pair| {
                    pair.split_once(':').map(|(_, key)| key) == Some(MAILCHIMP_KEY)
                }),
            Kind::Zapier => request.url.path() == ZAPIER_HOOK_PATH,
        }
    }

    fn unauthorised(&self) -> ResponseTemplate {
        match self.kind {
            Kind::Hubspot => error(
                401,
                json!({"status": "error", "message": "Authentication credentials not found.", "category": "INVALID_AUTHENTICATION"}),
            ),
            Kind::Mailchimp => error(
                401,
                json!({"type": "x", "title": "API Key Invalid", "status": 401, "detail": "Your API key may be invalid, or you've attempted to access the wrong datacenter."}),
            ),
            Kind::Sendgrid => error(
                401,
                json!({"errors": [{"field": null, "message": "authorization required"}]}),
            ),
            Kind::Zapier => error(404, json!({"status": "error", "message": "hook not found"})),
        }
    }

    /// (is this a push, the contacts array) for the request, or None for other endpoints.
    fn push_contacts<'a>(&self, request: &Request, body: &'a Value) -> Option<&'a Vec<Value>> {
        let (method, path) = (request.method.as_str(), request.url.path());
        let key = match (self.kind, method, path) {
            (Kind::Hubspot, "POST", "/crm/v3/objects/contacts/batch/upsert") => "inputs",
            (Kind::Mailchimp, "POST", p) if p == format!("/3.0/lists/{MAILCHIMP_LIST}") => {
                "members"
            }
            (Kind::Sendgrid, "PUT", "/v3/marketing/contacts") => "contacts",
            (Kind::Zapier, "POST", ZAPIER_HOOK_PATH) if body["event"] == "contacts" => "contacts",
            _ => return None,
        };
        body[key].as_array()
    }

    fn email_of(&self, item: &Value) -> Option<String> {
        let email = match self.kind {
            Kind::Hubspot => &item["id"],
            Kind::Mailchimp => &item["email_address"],
            Kind::Sendgrid | Kind::Zapier => &item["email"],
        };
        email.as_str().map(str::to_string)
    }

    /// Checks one pushed item against the provider's documented shape.
    fn check_item(&self, item: &Value, problems: &mut Vec<String>) {
        match self.kind {
            Kind::Hubspot => {
                if item["idProperty"] != "email" || item["id"] != item["properties"]["email"] {
                    problems.push(format!("hubspot input not keyed by email: {item}"));
                }
            }
            Kind::Mailchimp => {
                // `status` would change an existing member's status (re-subscribing someone
                // who unsubscribed); only `status_if_new` may be sent.
                if item["status_if_new"] != "subscribed"
                    || item.get("status").is_some()
                    || !item["merge_fields"].is_object()
                {
                    problems.push(format!("mailchimp member malformed: {item}"));
                }
            }
            Kind::Sendgrid => {
                if item.get("first_name").is_none() {
                    problems.push(format!("sendgrid contact without first_name: {item}"));
                }
            }
            Kind::Zapier => {
                if item.get("id").is_none() {
                    problems.push(format!("zapier contact without id: {item}"));
                }
            }
        }
    }

    fn accept(
        &self,
        state: &mut State,
        emails: Vec<String>,
        body: Value,
        idempotency_key: Option<String>,
    ) -> ResponseTemplate {
        let refused: Vec<String> = emails
            .iter()
            .filter(|e| state.refused.contains(*e))
            .cloned()
            .collect();
        if self.kind == Kind::Hubspot && state.whole_batch_refusals && !refused.is_empty() {
            return error(
                400,
                json!({"status": "error", "category": "VALIDATION_ERROR",
                    "message": format!("Property values were not valid: invalid email {}", refused[0])}),
            );
        }
        // SendGrid checks the request before it starts an import: one malformed record refuses
        // the whole PUT, naming the record by its place, not its address.
        if self.kind == Kind::Sendgrid && state.whole_batch_refusals && !refused.is_empty() {
            let place = emails
                .iter()
                .position(|e| *e == refused[0])
                .unwrap_or_default();
            return error(
                400,
                json!({"errors": [{"field": format!("contacts[{place}].email"), "message": "invalid email"}]}),
            );
        }
        state.pushes.push(Push {
            emails: emails.clone(),
            body,
            idempotency_key,
        });
        if state.lose_answers > 0 {
            state.lose_answers -= 1;
            return ResponseTemplate::new(200).lost();
        }
        let answer = match self.kind {
            Kind::Hubspot => {
                let results: Vec<Value> = emails
                    .iter()
                    .filter(|e| !refused.contains(e))
                    .enumerate()
                    .map(|(i, e)| json!({"id": i.to_string(), "new": true, "properties": {"email": e}}))
                    .collect();
                if refused.is_empty() {
                    error(200, json!({"status": "COMPLETE", "results": results}))
                } else {
                    let errors: Vec<Value> = refused
                        .iter()
                        .map(|e| json!({"status": "error", "category": "VALIDATION_ERROR", "message": format!("Email address {e} is invalid"), "context": {"ids": [e]}}))
                        .collect();
                    error(
                        207,
                        json!({"status": "COMPLETE", "results": results, "numErrors": errors.len(), "errors": errors}),
                    )
                }
            }
            Kind::Mailchimp => {
                let errors: Vec<Value> = refused
                    .iter()
                    .map(|e| json!({"email_address": e, "error": format!("{e} looks fake or invalid, please enter a real email address."), "error_code": "ERROR_CONTACT_EXISTS"}))
                    .collect();
                error(
                    200,
                    json!({
                        "new_members": [], "updated_members": [],
                        "errors": errors, "total_created": emails.len() - refused.len(),
                        "total_updated": 0, "error_count": refused.len()
                    }),
                )
            }
            Kind::Sendgrid => {
                let job = format!("job-{}", state.sendgrid_jobs.len() + 1);
                state
                    .sendgrid_jobs
                    .push((job.clone(), refused.len() as u64, false));
                error(202, json!({"job_id": job}))
            }
            Kind::Zapier => error(200, json!({"status": "success", "id": "abc"})),
        };
        match state.delay {
            Some(delay) => answer.set_delay(delay),
            None => answer,
        }
    }
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !self.authorised(request) {
            return self.unauthorised();
        }
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let path = request.url.path().to_string();
        if let Some(answer) = self.feeds.respond(request.method.as_str(), &path, request) {
            return answer;
        }
        if self.kind == Kind::Hubspot && path == "/crm/v3/objects/contacts/batch/read" {
            return hubspot_batch_read(&mut state, &body);
        }

        // Credential checks and SendGrid import status.
        match (self.kind, request.method.as_str(), path.as_str()) {
            (Kind::Hubspot, "GET", "/crm/v3/objects/contacts") => {
                let query: std::collections::HashMap<String, String> =
                    request.url.query_pairs().into_owned().collect();
                if query.get("limit").map(String::as_str) == Some("1") {
                    state.verify_calls += 1;
                    return error(200, json!({"results": []}));
                }
                state.import_requests += 1;
                let after: usize = query.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
                let page_size = if state.import_page == 0 {
                    IMPORT_PAGE
                } else {
                    state.import_page
                };
                if !query.get("properties").is_some_and(|p| p.contains("email")) {
                    state
                        .problems
                        .push("import without the email property".into());
                }
                let page: Vec<Value> = state
                    .remote
                    .iter()
                    .enumerate()
                    .skip(after)
                    .take(page_size)
                    .map(|(i, (e, f, l, m))| json!({"id": i.to_string(), "properties": {"email": e, "firstname": f, "lastname": l, "company": null}, "createdAt": m, "updatedAt": m, "archived": false}))
                    .collect();
                let next = after + page.len();
                let mut body = json!({"results": page});
                if next < state.remote.len() {
                    body["paging"] = json!({"next": {"after": next.to_string(), "link": "https://api.hubapi.com/..."}});
                }
                return error(200, body);
            }
            (Kind::Mailchimp, "GET", p) if p == format!("/3.0/lists/{MAILCHIMP_LIST}/members") => {
                state.import_requests += 1;
                let query: std::collections::HashMap<String, String> =
                    request.url.query_pairs().into_owned().collect();
                // Without a status filter Mailchimp lists every member, unsubscribed ones too.
                if query.get("status").map(String::as_str) != Some("subscribed") {
                    let others: Vec<Value> = state
                        .unsubscribed
                        .iter()
                        .map(|(e, status)| json!({"id": "y", "email_address": e, "status": status, "merge_fields": {"FNAME": "Gone", "LNAME": "", "PHONE": ""}, "last_changed": "2024-06-01T00:00:00+00:00"}))
                        .collect();
                    state
                        .problems
                        .push("members listed without status=subscribed".into());
                    return error(
                        200,
                        json!({"members": others, "list_id": MAILCHIMP_LIST, "total_items": others.len()}),
                    );
                }
                let offset: usize = query
                    .get("offset")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0);
                let members: Vec<Value> = state
                    .remote
                    .iter()
                    .skip(offset)
                    .take(IMPORT_PAGE)
                    .map(|(e, f, l, m)| json!({"id": "x", "email_address": e, "status": "subscribed", "merge_fields": {"FNAME": f, "LNAME": l, "PHONE": ""}, "last_changed": m}))
                    .collect();
                return error(
                    200,
                    json!({"members": members, "list_id": MAILCHIMP_LIST, "total_items": state.remote.len()}),
                );
            }
            (Kind::Mailchimp, "GET", p) if p.starts_with("/3.0/lists/") => {
                state.verify_calls += 1;
                return if p == format!("/3.0/lists/{MAILCHIMP_LIST}") || p == "/3.0/lists/list43" {
                    error(200, json!({"id": MAILCHIMP_LIST, "name": "Customers"}))
                } else {
                    error(
                        404,
                        json!({"title": "Resource Not Found", "status": 404, "detail": "The requested resource could not be found."}),
                    )
                };
            }
            (Kind::Sendgrid, "GET", "/v3/scopes") => {
                state.verify_calls += 1;
                return error(
                    200,
                    json!({"scopes": ["marketing.read", "marketing.write"]}),
                );
            }
            (Kind::Sendgrid, "GET", p) if p.starts_with("/v3/marketing/contacts/imports/") => {
                if state.failing_polls > 0 {
                    state.failing_polls -= 1;
                    return error(503, json!({"errors": [{"message": "service unavailable"}]}));
                }
                let id = p.trim_start_matches("/v3/marketing/contacts/imports/");
                let Some(job) = state.sendgrid_jobs.iter_mut().find(|j| j.0 == id) else {
                    return error(404, json!({"errors": [{"message": "not found"}]}));
                };
                // Pending on the first poll, then done.
                if !job.2 {
                    job.2 = true;
                    return error(
                        200,
                        json!({"id": id, "status": "pending", "job_type": "upsert", "results": {}}),
                    );
                }
                let errored = job.1;
                return error(
                    200,
                    json!({"id": id, "status": "completed", "job_type": "upsert",
                    "results": {"requested_count": 1, "created_count": 1, "updated_count": 0, "deleted_count": 0, "errored_count": errored}}),
                );
            }
            (Kind::Zapier, "POST", ZAPIER_HOOK_PATH) if body["event"] == "connection_test" => {
                state.verify_calls += 1;
                return error(200, json!({"status": "success"}));
            }
            _ => {}
        }

        let Some(items) = self.push_contacts(request, &body) else {
            state
                .problems
                .push(format!("unexpected {} {path}", request.method));
            return error(404, json!({"message": "no such endpoint"}));
        };
        state.push_requests += 1;
        if request
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            != Some("application/json")
        {
            state
                .problems
                .push("push without a JSON content type".into());
        }
        if items.is_empty() || items.len() > self.kind.max_batch() {
            state
                .problems
                .push(format!("batch of {} contacts", items.len()));
        }
        if self.kind == Kind::Mailchimp && body["update_existing"] != true {
            state
                .problems
                .push("mailchimp push without update_existing".into());
        }
        if self.kind == Kind::Sendgrid && body["list_ids"] != json!(["l1", "l2"]) {
            state
                .problems
                .push(format!("sendgrid list_ids: {}", body["list_ids"]));
        }
        let mut problems = Vec::new();
        for item in items {
            self.check_item(item, &mut problems);
        }
        state.problems.extend(problems);

        if !state.scripted.is_empty() && state.script_after > 0 {
            state.script_after -= 1;
        } else if let Some(answer) = state.scripted.pop_front() {
            return answer;
        }
        if state
            .fail_every
            .is_some_and(|n| state.push_requests.is_multiple_of(n))
        {
            return error(503, json!({"message": "temporarily unavailable"}));
        }
        if let Some((requests, per)) = state.limit {
            let now = Instant::now();
            while state
                .window
                .front()
                .is_some_and(|t| now.duration_since(*t) >= per)
            {
                state.window.pop_front();
            }
            if state.window.len() >= requests {
                state.rejected_429 += 1;
                return error(429, json!({"status": "error", "message": "You have reached your ten_secondly_rolling limit.", "policyName": "TEN_SECONDLY_ROLLING"}))
                    .insert_header("retry-after", "1");
            }
            state.window.push_back(now);
        }
        if state.hang_after.is_some_and(|n| state.pushes.len() >= n) {
            return error(200, json!({})).set_delay(Duration::from_secs(3600));
        }
        let emails: Vec<String> = items.iter().filter_map(|i| self.email_of(i)).collect();
        let key = request
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.accept(&mut state, emails, body, key)
    }
}

/// HubSpot's batch read: the remote contacts (id = position) among the asked ids; unknown ids
/// are listed in `errors` (207), as HubSpot does.
fn hubspot_batch_read(state: &mut State, body: &Value) -> ResponseTemplate {
    state.batch_reads += 1;
    let inputs = body["inputs"].as_array().cloned().unwrap_or_default();
    if inputs.is_empty() || inputs.len() > 100 {
        state
            .problems
            .push(format!("batch read of {} ids", inputs.len()));
    }
    if !body["properties"]
        .as_array()
        .is_some_and(|p| p.iter().any(|v| v == "email"))
    {
        state
            .problems
            .push("batch read without the email property".into());
    }
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for input in inputs {
        let id = input["id"].as_str().unwrap_or_default().to_string();
        match id.parse::<usize>().ok().and_then(|i| state.remote.get(i)) {
            Some((e, f, l, m)) => results.push(json!({"id": id, "properties": {"email": e, "firstname": f, "lastname": l}, "createdAt": m, "updatedAt": m, "archived": false})),
            None => missing.push(id),
        }
    }
    if missing.is_empty() {
        return error(200, json!({"status": "COMPLETE", "results": results}));
    }
    error(
        207,
        json!({"status": "COMPLETE", "results": results, "numErrors": 1,
            "errors": [{"status": "error", "category": "OBJECT_NOT_FOUND", "message": "Could not get some CONTACT objects, they may be deleted or not exist.", "context": {"ids": missing}}]}),
    )
}
