//! The change-feed half of the provider fakes (HubSpot's account info, Mailchimp's list
//! webhooks, Zoho's watch channels), shared by `FakeProvider` and `FakeOAuth`: it records what
//! the service registered and removed, refuses what the real API refuses (an unknown webhook
//! id is 404, a channel id that is not a number is 400) and can be told to fail.

use std::sync::{Arc, Mutex};

use crate::fake_http::{Request, ResponseTemplate};
use serde_json::{Value, json};

pub const PORTAL_ID: u64 = 62515;

/// A Zoho watch channel as the service set it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub channel_id: String,
    pub token: String,
    pub notify_url: String,
    pub expiry: String,
}

#[derive(Default)]
struct FeedState {
    /// Mailchimp: live webhooks (id, url, list).
    webhooks: Vec<(String, String, String)>,
    deleted_webhooks: Vec<String>,
    next_id: usize,
    /// Zoho: live channels, and every watch call (method).
    channels: Vec<Channel>,
    watch_calls: Vec<String>,
    /// The next registrations answer 503.
    failing: usize,
    account_calls: usize,
    problems: Vec<String>,
}

#[derive(Clone, Default)]
pub struct Feeds {
    state: Arc<Mutex<FeedState>>,
}

fn answer(status: u16, body: Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(body)
}

impl Feeds {
    fn state(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn fail_registrations(&self, n: usize) {
        self.state().failing = n;
    }

    pub fn account_calls(&self) -> usize {
        self.state().account_calls
    }

    /// Mailchimp: the live webhooks (id, url).
    pub fn webhooks(&self) -> Vec<(String, String)> {
        self.state()
            .webhooks
            .iter()
            .map(|(id, url, _)| (id.clone(), url.clone()))
            .collect()
    }

    /// Mailchimp: the list each live webhook is on.
    pub fn webhook_lists(&self) -> Vec<String> {
        self.state().webhooks.iter().map(|w| w.2.clone()).collect()
    }

    pub fn deleted_webhooks(&self) -> Vec<String> {
        self.state().deleted_webhooks.clone()
    }

    /// Zoho: the live channels.
    pub fn channels(&self) -> Vec<Channel> {
        self.state().channels.clone()
    }

    /// Zoho: the methods of every watch call (POST, PATCH, DELETE).
    pub fn watch_calls(&self) -> Vec<String> {
        self.state().watch_calls.clone()
    }

    pub fn take_problems(&self) -> Vec<String> {
        std::mem::take(&mut self.state().problems)
    }

    /// Answers a feed request, or `None` when the request is not one.
    pub fn respond(&self, method: &str, path: &str, request: &Request) -> Option<ResponseTemplate> {
        let mut s = self.state();
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        if method == "GET" && path == "/account-info/v3/details" {
            s.account_calls += 1;
            let portal = PORTAL_ID;
            return Some(answer(
                200,
                json!({"portalId": portal, "accountType": "STANDARD", "timeZone": "US/Eastern",
                    "companyCurrency": "USD", "uiDomain": "app.hubspot.com", "dataHostingLocation": "na1"}),
            ));
        }
        if let Some(rest) = path.strip_prefix("/3.0/lists/")
            && let Some((list, tail)) = rest.split_once("/webhooks")
        {
            if method == "POST" && tail.is_empty() {
                if s.failing > 0 {
                    s.failing -= 1;
                    return Some(answer(
                        503,
                        json!({"title": "Service Unavailable", "status": 503}),
                    ));
                }
                let url = body["url"].as_str().unwrap_or_default().to_string();
                if !url.starts_with("http") {
                    s.problems.push(format!("mailchimp webhook url {url:?}"));
                }
                if body["sources"]["api"] != json!(false) {
                    s.problems.push(
                        "mailchimp webhook also for API changes (echoes our own pushes)".into(),
                    );
                }
                s.next_id += 1;
                let id = format!("wh{}", s.next_id);
                s.webhooks.push((id.clone(), url.clone(), list.to_string()));
                return Some(answer(
                    200,
                    json!({"id": id, "url": url, "list_id": list, "events": body["events"], "sources": body["sources"]}),
                ));
            }
            if method == "DELETE"
                && let Some(id) = tail.strip_prefix('/')
            {
                let before = s.webhooks.len();
                s.webhooks.retain(|(w, _, l)| !(w == id && l == list));
                if s.webhooks.len() == before {
                    return Some(answer(
                        404,
                        json!({"title": "Resource Not Found", "status": 404}),
                    ));
                }
                s.deleted_webhooks.push(id.to_string());
                return Some(ResponseTemplate::new(204));
            }
        }
        if path == "/crm/v2/actions/watch" {
            s.watch_calls.push(method.to_string());
            if method == "DELETE" {
                let ids: String = request
                    .url
                    .query_pairs()
                    .find(|(k, _)| k == "channel_ids")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                s.channels
                    .retain(|c| !ids.split(',').any(|id| id == c.channel_id));
                return Some(answer(
                    200,
                    json!({"watch": [{"code": "SUCCESS", "status": "success", "message": "Successfully unsubscribed"}]}),
                ));
            }
            if s.failing > 0 {
                s.failing -= 1;
                return Some(answer(
                    500,
                    json!({"code": "INTERNAL_ERROR", "status": "error", "message": "try later"}),
                ));
            }
            let watch = &body["watch"][0];
            let Some(channel_id) = watch["channel_id"].as_u64() else {
                return Some(answer(
                    400,
                    json!({"watch": [{"code": "INVALID_DATA", "status": "error", "message": "channel_id must be a long"}]}),
                ));
            };
            if watch["events"] != json!(["Contacts.all"]) || watch["notify_url"].as_str().is_none()
            {
                s.problems.push(format!("zoho watch body {watch}"));
            }
            let channel = Channel {
                channel_id: channel_id.to_string(),
                token: watch["token"].as_str().unwrap_or_default().to_string(),
                notify_url: watch["notify_url"].as_str().unwrap_or_default().to_string(),
                expiry: watch["channel_expiry"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            };
            if channel.token.len() > 50 {
                s.problems
                    .push("zoho channel token longer than 50 characters".into());
            }
            let known = s
                .channels
                .iter()
                .any(|c| c.channel_id == channel.channel_id);
            if method == "PATCH" && !known {
                return Some(answer(
                    400,
                    json!({"watch": [{"code": "INVALID_DATA", "status": "error", "message": "no such channel"}]}),
                ));
            }
            s.channels.retain(|c| c.channel_id != channel.channel_id);
            s.channels.push(channel.clone());
            return Some(answer(
                200,
                json!({"watch": [{"code": "SUCCESS", "status": "success", "message": "Successfully subscribed for actions-watch of the given module",
                    "details": {"events": [{"channel_expiry": channel.expiry, "resource_uri": "https://www.zohoapis.com/crm/v2/Contacts", "resource_id": "1", "resource_name": "Contacts", "channel_id": channel.channel_id}]}}]}),
            ));
        }
        None
    }
}
