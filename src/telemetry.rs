//! Logging setup and the request-scoped span used by both servers.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogFormat;

/// HTTP client crates whose debug lines print request URLs, and a Zapier hook URL is itself a
/// secret: they stay at `info` unless LOG_LEVEL names them explicitly.
const QUIET_CLIENT_CRATES: [&str; 3] = ["reqwest", "hyper_util", "hyper"];

/// Installs the global subscriber. Safe to call more than once (later calls are ignored).
pub fn init(format: LogFormat, filter: &str) {
    let mut filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let named = filter.to_string();
    for krate in QUIET_CLIENT_CRATES {
        if !named.contains(krate)
            && let Ok(directive) = format!("{krate}=info").parse()
        {
            filter = filter.add_directive(directive);
        }
    }
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr)
                    .with_ansi(false),
            )
            .try_init(),
        LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").map(|v| v.to_string_lossy().into_owned());
            let colours = use_colours(std::io::stderr().is_terminal(), no_color.as_deref());
            registry
                .with(fmt::layer().with_writer(std::io::stderr).with_ansi(colours))
                .try_init()
        }
    };
}

/// Whether text logs carry ANSI colours: only when stderr is a terminal, and never while
/// `NO_COLOR` is set to anything but the empty string (<https://no-color.org>).
fn use_colours(is_terminal: bool, no_color: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty)
}

/// The request id header read from callers and echoed back.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The span of one request: method, path and request id; `user_id` is filled in after
/// authentication. Never record headers or bodies here (they carry tokens and payloads).
pub fn request_span<B>(request: &http::Request<B>) -> tracing::Span {
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %loggable_path(request.uri().path()),
        request_id = %request_id,
        user_id = tracing::field::Empty,
    )
}

/// The path as logs may show it: a Mailchimp webhook URL ends with its connection's secret,
/// which no log line carries.
pub fn loggable_path(path: &str) -> &str {
    const MAILCHIMP: &str = "/integrations/webhook/mailchimp";
    if path.len() > MAILCHIMP.len() && path.starts_with(MAILCHIMP) {
        "/integrations/webhook/mailchimp/{secret}"
    } else {
        path
    }
}

/// An error and its causes on one line, for logs (never sent to a client).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::use_colours;

    #[test]
    fn colours_only_on_a_terminal_and_never_with_no_color() {
        // A terminal, NO_COLOR unset or empty: colours.
        assert!(use_colours(true, None));
        assert!(use_colours(true, Some("")));
        // Any other value turns them off, whatever it says.
        for value in ["1", "0", "false", "no", " "] {
            assert!(!use_colours(true, Some(value)), "NO_COLOR={value:?}");
        }
        // Not a terminal (a file, a pipe, a log collector): never.
        for no_color in [None, Some(""), Some("1")] {
            assert!(!use_colours(false, no_color), "NO_COLOR={no_color:?}");
        }
    }
}
