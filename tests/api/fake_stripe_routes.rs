//! What the fake Stripe answers, route by route, as Stripe does: objects it keeps, 404 for ids it
//! does not know, 400 for what Stripe refuses, and the first answer again for a reused
//! idempotency key.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{Handler, Received, State, error, objects::merge};
use crate::fake_http::ResponseTemplate;

impl Handler {
    pub(super) fn answer(
        &self,
        state: &mut State,
        received: &Received,
        form: &HashMap<String, String>,
    ) -> ResponseTemplate {
        let is_post = received.method == "POST";
        if is_post {
            // Stripe replays the first answer for a reused idempotency key.
            if let Some(answer) = received
                .idempotency_key
                .as_ref()
                .and_then(|k| state.replays.get(k))
            {
                return ResponseTemplate::new(200).set_body_json(answer.clone());
            }
        } else if state.fail_reads {
            return error(500, "api_error", "injected failure");
        }
        let segments: Vec<&str> = received.path.trim_start_matches('/').split('/').collect();
        let answer = match (received.method.as_str(), segments.as_slice()) {
            ("POST", ["v1", "customers"]) => {
                let mut customer = self.fixtures["customer"].clone();
                let id = self.next("cus_test");
                merge(
                    &mut customer,
                    json!({
                        "id": id,
                        "email": form.get("email"),
                        "metadata": { "user_id": form.get("metadata[user_id]") },
                    }),
                );
                state.customers.insert(id, customer.clone());
                customer
            }
            ("POST", ["v1", "checkout", "sessions"]) => {
                // As Stripe: a price it does not know, or a currency the price has no option
                // for, is refused.
                let price_id = form
                    .get("line_items[0][price]")
                    .cloned()
                    .unwrap_or_default();
                let Some(price) = state.prices.get(&price_id) else {
                    return error(
                        400,
                        "invalid_request_error",
                        &format!("No such price: '{price_id}'"),
                    );
                };
                if let Some(currency) = form.get("currency")
                    && price["currency_options"].get(currency.as_str()).is_none()
                {
                    return error(
                        400,
                        "invalid_request_error",
                        &format!("The price specified does not support currency {currency}"),
                    );
                }
                let mut session = self.fixtures["checkout.session"].clone();
                let id = self.next("cs_test");
                merge(
                    &mut session,
                    json!({
                        "id": id,
                        "url": format!(
                            "{}/c/pay/{id}",
                            state.checkout_base.as_deref().unwrap_or("https://checkout.stripe.test")
                        ),
                        "mode": form.get("mode"),
                        "status": "open",
                        "customer": form.get("customer"),
                        "client_reference_id": form.get("client_reference_id"),
                        "success_url": form.get("success_url"),
                        "cancel_url": form.get("cancel_url"),
                    }),
                );
                state.sessions.insert(id, (session.clone(), form.clone()));
                session
            }
            ("POST", ["v1", "billing_portal", "sessions"]) => {
                let mut session = self.fixtures["billing_portal.session"].clone();
                let id = self.next("bps_test");
                merge(
                    &mut session,
                    json!({
                        "id": id,
                        "customer": form.get("customer"),
                        "return_url": form.get("return_url"),
                        "url": format!("https://billing.stripe.test/p/session/{id}"),
                    }),
                );
                session
            }
            ("GET", ["v1", "subscriptions", id]) => match state.subscriptions.get(*id) {
                Some(sub) => sub.clone(),
                None => return error(404, "invalid_request_error", "No such subscription"),
            },
            ("POST", ["v1", "subscriptions", id]) => {
                if let Some(price) = form.get("items[0][price]")
                    && !state.prices.contains_key(price)
                {
                    return error(
                        400,
                        "invalid_request_error",
                        &format!("No such price: '{price}'"),
                    );
                }
                let Some(sub) = state.subscriptions.get_mut(*id) else {
                    return error(404, "invalid_request_error", "No such subscription");
                };
                if let Some(cancel) = form.get("cancel_at_period_end") {
                    sub["cancel_at_period_end"] = json!(cancel == "true");
                }
                if let Some(price) = form.get("items[0][price]") {
                    // As Stripe: the item named by id, wherever it is in the list.
                    let named = form.get("items[0][id]").map(String::as_str);
                    let Some(item) = sub["items"]["data"]
                        .as_array_mut()
                        .and_then(|items| items.iter_mut().find(|i| i["id"].as_str() == named))
                    else {
                        return error(
                            400,
                            "invalid_request_error",
                            "items[0][id] is not an item of this subscription",
                        );
                    };
                    item["price"]["id"] = json!(price);
                    item["price"]["recurring"]["interval"] =
                        json!(super::objects::interval_of(price));
                }
                sub.clone()
            }
            ("GET", ["v1", "prices", id]) => match state.prices.get(*id) {
                Some(price) => {
                    let mut price = price.clone();
                    let expanded = received
                        .query
                        .iter()
                        .any(|(k, v)| k == "expand[]" && v == "currency_options");
                    if !expanded && let Some(p) = price.as_object_mut() {
                        p.remove("currency_options");
                    }
                    price
                }
                None => return error(404, "invalid_request_error", "No such price"),
            },
            ("GET", ["v1", "invoices", id]) => match state.invoices.get(*id) {
                Some(invoice) => invoice.clone(),
                None => return error(404, "invalid_request_error", "No such invoice"),
            },
            ("GET", ["v1", "events"]) => {
                let query: HashMap<String, String> = received.query.clone();
                let after: i64 = query
                    .get("created[gt]")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut listed: Vec<Value> = state
                    .events
                    .iter()
                    .filter(|e| e["created"].as_i64().unwrap_or(0) > after)
                    .cloned()
                    .collect();
                if let Some(start) = query.get("starting_after") {
                    let at = listed.iter().position(|e| e["id"] == start.as_str());
                    listed = at.map(|i| listed.split_off(i + 1)).unwrap_or_default();
                }
                let has_more = listed.len() > 2;
                listed.truncate(2);
                json!({ "object": "list", "url": "/v1/events", "has_more": has_more, "data": listed })
            }
            ("GET", ["v1", "subscriptions"]) => {
                let customer = received.query.get("customer").cloned().unwrap_or_default();
                let listed: Vec<Value> = state
                    .subscriptions
                    .values()
                    .filter(|s| s["customer"] == customer.as_str())
                    .cloned()
                    .collect();
                json!({ "object": "list", "url": "/v1/subscriptions", "has_more": false, "data": listed })
            }
            ("DELETE", ["v1", "subscriptions", id]) => {
                let Some(sub) = state.subscriptions.get_mut(*id) else {
                    return error(404, "invalid_request_error", "No such subscription");
                };
                if sub["status"] == "canceled" {
                    return error(400, "invalid_request_error", "already canceled");
                }
                sub["status"] = json!("canceled");
                let invoice = format!("in_latest_{id}");
                sub["latest_invoice"] = json!(invoice);
                let sub = sub.clone();
                if state.invoices.contains_key(&invoice) {
                    return ResponseTemplate::new(200).set_body_json(sub);
                }
                let mut paid = self.fixtures["invoice"].clone();
                merge(
                    &mut paid,
                    json!({ "id": invoice, "customer": sub["customer"],
                    "status": "paid", "amount_paid": 1900, "amount_due": 1900,
                    "payments": { "object": "list", "data": [
                        { "payment": { "type": "payment_intent", "payment_intent": format!("pi_{id}") } }
                    ] } }),
                );
                state.invoices.insert(invoice, paid);
                sub
            }
            // As Stripe: a price or subscription it does not know is refused; the new item has
            // no quantity (metered).
            ("POST", ["v1", "subscription_items"]) => {
                let price = form.get("price").cloned().unwrap_or_default();
                if !state.prices.contains_key(&price) {
                    return error(
                        400,
                        "invalid_request_error",
                        &format!("No such price: '{price}'"),
                    );
                }
                let sub_id = form.get("subscription").cloned().unwrap_or_default();
                let item_id = self.next("si_extra");
                let Some(sub) = state.subscriptions.get_mut(&sub_id) else {
                    return error(
                        400,
                        "invalid_request_error",
                        &format!("No such subscription: '{sub_id}'"),
                    );
                };
                let mut item = sub["items"]["data"][0].clone();
                item["id"] = json!(item_id);
                item["price"]["id"] = json!(price);
                item["price"]["recurring"]["usage_type"] = json!("metered");
                item["quantity"] = Value::Null;
                if let Some(items) = sub["items"]["data"].as_array_mut() {
                    // Stripe does not promise an order: the new item comes first.
                    items.insert(0, item.clone());
                }
                item
            }
            // As Stripe: one event per identifier; an unknown customer is refused.
            ("POST", ["v1", "billing", "meter_events"]) => {
                let identifier = form.get("identifier").cloned().unwrap_or_default();
                if state
                    .meter_events
                    .iter()
                    .any(|e| e.get("identifier") == Some(&identifier))
                {
                    return error(
                        400,
                        "invalid_request_error",
                        &format!("An event with identifier {identifier} already exists."),
                    );
                }
                let customer = form
                    .get("payload[stripe_customer_id]")
                    .cloned()
                    .unwrap_or_default();
                if !state.customers.contains_key(&customer) {
                    return error(
                        400,
                        "invalid_request_error",
                        "No customer found for the payload",
                    );
                }
                state.meter_events.push(form.clone());
                let answer = json!({ "object": "billing.meter_event", "identifier": identifier,
                    "event_name": form.get("event_name"), "livemode": false,
                    "payload": { "stripe_customer_id": customer, "value": form.get("payload[value]") } });
                if state.lose_meter_answers > 0 {
                    state.lose_meter_answers -= 1;
                    return ResponseTemplate::new(200).set_body_json(answer).lost();
                }
                answer
            }
            ("POST", ["v1", "refunds"]) => {
                state.refunds.push(form.clone());
                json!({ "id": self.next("re_test"), "object": "refund", "status": "succeeded",
                        "payment_intent": form.get("payment_intent") })
            }
            ("GET", ["v1", "checkout", "sessions", id]) => match state.sessions.get(*id) {
                Some((session, _)) => session.clone(),
                None => return error(404, "invalid_request_error", "No such checkout.session"),
            },
            // As Stripe: 404 for a session it does not know, 400 for one already paid.
            ("POST", ["v1", "checkout", "sessions", id, "expire"]) => {
                let Some((session, _)) = state.sessions.get_mut(*id) else {
                    return error(404, "invalid_request_error", "No such checkout.session");
                };
                if session["status"] == "complete" {
                    return error(
                        400,
                        "invalid_request_error",
                        "Only Checkout Sessions with a status in [\"open\"] can be expired",
                    );
                }
                session["status"] = json!("expired");
                session.clone()
            }
            _ => return error(404, "invalid_request_error", "Unrecognized request URL"),
        };
        if is_post && let Some(key) = received.idempotency_key.clone() {
            state.replays.insert(key, answer.clone());
        }
        ResponseTemplate::new(200).set_body_json(answer)
    }
}
