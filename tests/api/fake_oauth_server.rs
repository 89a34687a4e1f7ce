//! The authorization-server half of the OAuth fakes: the consent page a browser sees, code
//! issuance with the checks a provider makes, the token endpoint (code exchange with PKCE,
//! refresh, rotation) and revocation.

use std::{collections::BTreeMap, sync::Mutex};

use crate::fake_http::{Request, ResponseTemplate};
use serde_json::json;

use super::{CLIENT_ID, CLIENT_SECRET, OKind, Responder, State, header, json_answer, s256};

impl Responder {
    pub(super) fn token(&self, request: &Request) -> ResponseTemplate {
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

    pub(super) fn revoke(&self, request: &Request) -> ResponseTemplate {
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
}

/// Checks an authorization URL the service built, as the provider would, and issues a code:
/// (code, state). `redirect_uri`, when given, is the only one accepted.
pub(super) fn issue_code(
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
pub(super) fn consent_page(
    kind: OKind,
    uri: &str,
    state: &Mutex<State>,
    request: &Request,
) -> ResponseTemplate {
    // The URL as the browser opened it, on the fake's own address.
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
