//! The integrations page: an API-key provider (HubSpot) and an OAuth one (Dropbox).

use std::time::Duration;

use super::{run_scenario, spawn_for_browser};
use crate::{
    fake_http::HoldPoint,
    fake_oauth::{FakeOAuth, OKind},
    fake_providers::{FakeProvider, HUBSPOT_TOKEN, Kind},
    helpers::token,
};

crate::tests!(browser: [hubspot_connects_after_a_rejected_key_syncs_with_live_progress_and_disconnects, dropbox_connects_through_the_oauth_button]);

const CONTACTS: usize = 250;
/// HubSpot refuses this contact (an invalid record): the page lists it with HubSpot's reason.
const REFUSED: &str = "contact7@example.com";

async fn hubspot_connects_after_a_rejected_key_syncs_with_live_progress_and_disconnects() {
    let hubspot = FakeProvider::start(Kind::Hubspot).await;
    // Latency, as HubSpot has; and the second batch waits at HubSpot's door until the page has
    // shown the progress between (the scenario then posts to RELEASE_URL).
    hubspot.delay_pushes(Duration::from_millis(100));
    let _second_batch = hubspot.hold_pushes(HoldPoint::Arrival, 1);
    hubspot.refuse(&[REFUSED]);
    let settings: Vec<(String, String)> = hubspot
        .settings()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let app = spawn_for_browser(&settings).await;
    let user = "browser-hubspot";
    app.add_contacts(user, CONTACTS).await;

    run_scenario(
        "integrations-hubspot",
        &app,
        &[
            ("TOKEN", token(user)),
            ("HUBSPOT_TOKEN", HUBSPOT_TOKEN.to_string()),
            ("CONTACTS", CONTACTS.to_string()),
            ("REFUSED", REFUSED.to_string()),
            (
                "RELEASE_URL",
                format!("{}/__fake/release", hubspot.server.uri()),
            ),
        ],
    )
    .await;

    let mut pushed: Vec<String> = hubspot
        .pushed_emails()
        .into_iter()
        .filter(|e| e != REFUSED)
        .collect();
    let sent = pushed.len();
    pushed.sort();
    pushed.dedup();
    assert_eq!(
        pushed.len(),
        CONTACTS - 1,
        "every other contact reached HubSpot"
    );
    assert_eq!(sent, CONTACTS - 1, "none twice");
    assert!(
        hubspot.pushes().len() >= 3,
        "batches of at most 100: {}",
        hubspot.pushes().len()
    );
    hubspot.assert_no_problems();
    let kinds = app.activity_kinds(user).await;
    for kind in [
        "integration.connected",
        "integration.updated",
        "integration.disconnected",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    assert_eq!(app.count("integrations", "").await, 0, "disconnected");
    app.stop().await;
}

async fn dropbox_connects_through_the_oauth_button() {
    let dropbox = FakeOAuth::start(OKind::Dropbox).await;
    let app = spawn_for_browser(&dropbox.settings()).await;
    let user = "browser-dropbox";

    run_scenario("integrations-dropbox", &app, &[("TOKEN", token(user))]).await;

    dropbox.assert_no_problems();
    assert_eq!(
        dropbox.token_requests().len(),
        1,
        "one code exchange: {:?}",
        dropbox.token_requests()
    );
    assert_eq!(
        app.count(
            "integrations",
            "provider = 'dropbox' AND status = 'active' AND user_id = 'browser-dropbox'"
        )
        .await,
        1
    );
    app.stop().await;
}
