//! The API half of the OAuth fakes: each provider's contact and file endpoints (Salesforce,
//! Zoho CRM, Google Drive, Dropbox), holding records and files and checking request shapes.

use std::{collections::BTreeMap, time::Duration};

use crate::fake_http::{Request, ResponseTemplate};
use serde_json::{Value, json};

use super::{PartialUpload, Record, Responder, State, header, json_answer};

impl Responder {
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

    pub(super) fn salesforce(
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
                    if s.locked_once.remove(&email) {
                        results.push(json!({"success": false, "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "unable to obtain exclusive access to this record", "fields": []}]}));
                        continue;
                    }
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

    pub(super) fn zoho(
        &self,
        s: &mut State,
        request: &Request,
        method: &str,
        path: &str,
    ) -> ResponseTemplate {
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
                if let Some(ids) = param("ids") {
                    return zoho_by_ids(s, &ids);
                }
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

    pub(super) fn drive(
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
            ("GET", p, _)
                if p.starts_with("/drive/v3/files/") && p != "/drive/v3/files/generateIds" =>
            {
                let id = p.trim_start_matches("/drive/v3/files/");
                if s.files.contains_key(id) {
                    let trashed = s.trashed.contains(id);
                    json_answer(200, json!({"id": id, "trashed": trashed}))
                } else {
                    json_answer(
                        404,
                        json!({"error": {"code": 404, "message": format!("File not found: {id}.")}}),
                    )
                }
            }
            ("GET", "/drive/v3/files/generateIds", _) => {
                let id = format!("reserved{}", s.reserved.len() + 1);
                s.reserved.push(id.clone());
                json_answer(
                    200,
                    json!({"kind": "drive#generatedIds", "space": "drive", "ids": [id]}),
                )
            }
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
                let asked = metadata["id"].as_str().map(str::to_string);
                if let Some(refused) = refuse_asked_id(s, asked.as_deref()) {
                    return refused;
                }
                let id = file_id
                    .or(asked)
                    .unwrap_or_else(|| format!("file{}", s.files.len() + 1));
                s.uploads
                    .push((format!("{method} multipart"), id.clone(), content.clone()));
                s.files.insert(id.clone(), content);
                let trashed = s.trashed.contains(&id);
                if s.lose_upload_answers > 0 {
                    s.lose_upload_answers -= 1;
                    return ResponseTemplate::new(200).lost();
                }
                json_answer(200, json!({"id": id, "trashed": trashed}))
            }
            ("POST", "/upload/drive/v3/files", "resumable") | ("PATCH", _, "resumable") => {
                if file_id.as_ref().is_some_and(|id| !s.files.contains_key(id)) {
                    return json_answer(
                        404,
                        json!({"error": {"code": 404, "message": "File not found."}}),
                    );
                }
                let metadata: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
                if metadata["name"] != "contacts.csv" || metadata["mimeType"] != "text/csv" {
                    s.problems.push(format!("metadata {metadata}"));
                }
                let asked = metadata["id"].as_str().map(str::to_string);
                if let Some(refused) = refuse_asked_id(s, asked.as_deref()) {
                    return refused;
                }
                s.sessions_started += 1;
                let session = format!("s{}", s.sessions_started);
                let file = file_id.or(asked);
                s.sessions.insert(
                    session.clone(),
                    PartialUpload {
                        file,
                        received: Vec::new(),
                    },
                );
                ResponseTemplate::new(200).insert_header(
                    "Location",
                    format!("{}/upload/session/{session}?upload_id=x", self.uri).as_str(),
                )
            }
            ("PUT", p, _) if p.starts_with("/upload/session/") => {
                let session = p.trim_start_matches("/upload/session/").to_string();
                drive_session_put(s, &session, request)
            }
            _ => {
                s.problems.push(format!(
                    "unexpected {method} {path}?uploadType={upload_type}"
                ));
                json_answer(404, json!({"error": {"code": 404, "message": "not found"}}))
            }
        }
    }

    pub(super) fn dropbox(
        &self,
        s: &mut State,
        request: &Request,
        method: &str,
        path: &str,
    ) -> ResponseTemplate {
        let raw_arg = header(request, "dropbox-api-arg");
        if !raw_arg.is_ascii() || raw_arg.is_empty() {
            s.problems
                .push("Dropbox-API-Arg missing or not ASCII".into());
        }
        if header(request, "content-type") != "application/octet-stream" {
            s.problems
                .push("upload not application/octet-stream".into());
        }
        let arg: Value = serde_json::from_str(raw_arg).unwrap_or(Value::Null);
        match (method, path) {
            ("POST", "/2/files/upload") => {
                let Some(file) = dropbox_commit(s, &arg) else {
                    return json_answer(400, json!({"error_summary": "bad commit"}));
                };
                let content = request.body.clone();
                s.uploads
                    .push(("POST upload".into(), file.clone(), content.clone()));
                s.files.insert(file.clone(), content);
                json_answer(
                    200,
                    json!({"name": "contacts.csv", "path_display": file, "id": "id:abc"}),
                )
            }
            ("POST", "/2/files/upload_session/start") => {
                s.sessions_started += 1;
                let session = format!("dbx-session-{}", s.sessions_started);
                s.chunk_log.push(("start".into(), 0, request.body.len()));
                s.sessions.insert(
                    session.clone(),
                    PartialUpload {
                        file: None,
                        received: request.body.clone(),
                    },
                );
                json_answer(200, json!({"session_id": session}))
            }
            ("POST", "/2/files/upload_session/append_v2" | "/2/files/upload_session/finish") => {
                let finish = path.ends_with("finish");
                let route = if finish { "finish" } else { "append" };
                let session = arg["cursor"]["session_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let offset = arg["cursor"]["offset"].as_u64().unwrap_or(u64::MAX);
                s.chunk_log.push((route.into(), offset, request.body.len()));
                // On finish, a lookup error is wrapped in `lookup_failed`.
                let refuse = |error: Value| {
                    let error = if finish {
                        json!({".tag": "lookup_failed", "lookup_failed": error})
                    } else {
                        error
                    };
                    json_answer(
                        409,
                        json!({"error_summary": format!("{}/...", error[".tag"].as_str().unwrap_or("")), "error": error}),
                    )
                };
                let Some(held) = s.sessions.get(&session).map(|u| u.received.len() as u64) else {
                    return refuse(json!({".tag": "not_found"}));
                };
                if offset != held {
                    return refuse(json!({".tag": "incorrect_offset", "correct_offset": held}));
                }
                let (kept, fail) = chunk_fault(s, request.body.len());
                if let Some(upload) = s.sessions.get_mut(&session) {
                    upload.received.extend_from_slice(&request.body[..kept]);
                }
                if let Some(answer) = fail.as_ref().filter(|_| kept < request.body.len()) {
                    return answer.clone();
                }
                if finish {
                    let Some(file) = dropbox_commit(s, &arg["commit"]) else {
                        return json_answer(400, json!({"error_summary": "bad commit"}));
                    };
                    let content = s
                        .sessions
                        .remove(&session)
                        .map(|u| u.received)
                        .unwrap_or_default();
                    s.uploads
                        .push(("POST upload_session".into(), file.clone(), content.clone()));
                    s.files.insert(file.clone(), content);
                    if let Some(answer) = fail {
                        return answer;
                    }
                    return json_answer(
                        200,
                        json!({"name": "contacts.csv", "path_display": file, "id": "id:abc"}),
                    );
                }
                if let Some(answer) = fail {
                    return answer;
                }
                json_answer(200, Value::Null)
            }
            _ => {
                s.problems.push(format!("unexpected {method} {path}"));
                json_answer(404, json!({"error_summary": "not_found/"}))
            }
        }
    }
}

/// Drive's check of the id a create names (reserved with generateIds): one in use is refused
/// with 409, one it never handed out with 400.
fn refuse_asked_id(s: &mut State, asked: Option<&str>) -> Option<ResponseTemplate> {
    let asked = asked?;
    if s.files.contains_key(asked) {
        return Some(json_answer(
            409,
            json!({"error": {"code": 409, "message": "A file already exists with the provided ID."}}),
        ));
    }
    if !s.reserved.iter().any(|r| r == asked) {
        s.problems
            .push(format!("create with an id never reserved: {asked}"));
        return Some(json_answer(
            400,
            json!({"error": {"code": 400, "message": "The provided file ID is not usable."}}),
        ));
    }
    None
}

/// The file a Dropbox commit names, after checking it overwrites.
fn dropbox_commit(s: &mut State, commit: &Value) -> Option<String> {
    if commit["mode"] != "overwrite" || commit["autorename"] != false {
        s.problems.push(format!("upload arguments {commit}"));
    }
    commit["path"].as_str().map(str::to_string)
}

/// Counts a request carrying `len` bytes; when it is the broken one (`break_chunk`), how many
/// of its bytes to keep and the failing answer.
fn chunk_fault(s: &mut State, len: usize) -> (usize, Option<ResponseTemplate>) {
    s.chunk_requests += 1;
    match s.broken_chunk {
        Some((n, keep)) if n == s.chunk_requests => match keep {
            Some(k) => (
                k.min(len),
                Some(json_answer(
                    503,
                    json!({"error": {"code": 503, "message": "Service Unavailable"}}),
                )),
            ),
            None => (len, Some(ResponseTemplate::new(200).lost())),
        },
        _ => (len, None),
    }
}

/// Google Drive's session `PUT`: `Content-Range: bytes a-b/total` (or `*`) with bytes, or
/// `bytes */total` (or `*`) without, asking what Drive holds. `308` with `Range: bytes=0-N` until
/// the last byte of the declared total; then the file is written whole and the answer is it.
fn drive_session_put(s: &mut State, session: &str, request: &Request) -> ResponseTemplate {
    if let Some(id) = s.finished_sessions.get(session) {
        let trashed = s.trashed.contains(id);
        return json_answer(200, json!({"id": id, "trashed": trashed}));
    }
    let Some(held) = s.sessions.get(session).map(|u| u.received.len()) else {
        s.problems.push("upload to an unknown session".into());
        return json_answer(404, json!({"error": {"code": 404, "message": "Not Found"}}));
    };
    let range = header(request, "content-range").to_string();
    let Some((span, total)) = range.strip_prefix("bytes ").and_then(|r| r.split_once('/')) else {
        s.problems.push(format!("Content-Range {range:?}"));
        return json_answer(
            400,
            json!({"error": {"code": 400, "message": "bad Content-Range"}}),
        );
    };
    let total: Option<usize> = total.parse().ok();
    let body = &request.body;
    let (start, kept, fail) = if span == "*" {
        if !body.is_empty() {
            s.problems.push("a status query with a body".into());
        }
        s.chunk_log.push(("query".into(), held as u64, 0));
        (held, 0, None)
    } else {
        let (a, b) = span.split_once('-').unwrap_or(("x", "x"));
        let (a, b): (usize, usize) = (a.parse().unwrap_or(usize::MAX), b.parse().unwrap_or(0));
        s.chunk_log.push(("put".into(), a as u64, body.len()));
        if a != held || b + 1 != a + body.len() {
            s.problems.push(format!(
                "chunk {span} ({} bytes) while Drive holds {held}",
                body.len()
            ));
            return json_answer(400, json!({"error": {"code": 400, "message": "bad range"}}));
        }
        if total.is_none() && !body.len().is_multiple_of(256 * 1024) {
            s.problems.push(format!(
                "a chunk of {} bytes, not a multiple of 256 KiB",
                body.len()
            ));
        }
        let (kept, fail) = chunk_fault(s, body.len());
        (a, kept, fail)
    };
    let received = {
        let Some(upload) = s.sessions.get_mut(session) else {
            return json_answer(404, json!({}));
        };
        upload.received.extend_from_slice(&body[..kept]);
        upload.received.len()
    };
    if let Some(answer) = fail.as_ref().filter(|_| kept < body.len()) {
        return answer.clone();
    }
    let _ = start;
    if total == Some(received) {
        let Some(upload) = s.sessions.remove(session) else {
            return json_answer(404, json!({}));
        };
        let id = upload
            .file
            .unwrap_or_else(|| format!("file{}", s.files.len() + 1));
        s.uploads
            .push(("PUT resumable".into(), id.clone(), upload.received.clone()));
        s.files.insert(id.clone(), upload.received);
        s.finished_sessions.insert(session.to_string(), id.clone());
        if let Some(answer) = fail {
            return answer;
        }
        let trashed = s.trashed.contains(&id);
        return json_answer(200, json!({"id": id, "trashed": trashed}));
    }
    if let Some(answer) = fail {
        return answer;
    }
    let answer = ResponseTemplate::new(308);
    if received == 0 {
        answer
    } else {
        answer.insert_header("Range", format!("bytes=0-{}", received - 1).as_str())
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

/// Zoho's read by ids (at most 100): the records among them; none is 204.
fn zoho_by_ids(s: &mut State, ids: &str) -> ResponseTemplate {
    s.import_requests += 1;
    let asked: Vec<&str> = ids.split(',').collect();
    if asked.len() > 100 {
        s.problems.push(format!("read of {} ids", asked.len()));
    }
    let data: Vec<Value> = s
        .records
        .iter()
        .filter(|r| asked.contains(&r.id.as_str()))
        .map(|r| {
            json!({"id": r.id, "Email": r.email, "First_Name": r.fields.get("first"),
            "Last_Name": r.fields.get("last"), "Modified_Time": r.modified.replace('Z', "+00:00")})
        })
        .collect();
    if data.is_empty() {
        return ResponseTemplate::new(204);
    }
    json_answer(
        200,
        json!({"data": data, "info": {"count": data.len(), "more_records": false}}),
    )
}
