//! A local SMTP server that records what it accepts and can refuse: enough of RFC 5321 for a
//! real client (lettre) to deliver to it. Refusals are answered to DATA, as a mail server that
//! bounces (5xx) or defers (4xx) a message does; a refused message is not recorded.

#![allow(dead_code)]

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent (headers and MIME body), with quoted-printable soft breaks and
    /// `=XX` escapes decoded, so tests can look for whole links.
    pub data: String,
}

impl Mail {
    /// The `Subject:` header.
    pub fn subject(&self) -> String {
        self.data
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_default()
            .to_string()
    }
}

#[derive(Default)]
struct State {
    accepted: Vec<Mail>,
    /// Answers to the next DATA commands, instead of 250.
    refusals: VecDeque<u16>,
    refused: u32,
}

pub struct FakeSmtp {
    port: u16,
    state: Arc<Mutex<State>>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Quoted-printable, decoded enough for tests: soft line breaks and `=XX` bytes.
fn decode_qp(data: &str) -> String {
    let joined = data.replace("=\r\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl FakeSmtp {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(session(socket, Arc::clone(&shared)));
            }
        });
        Self { port, state }
    }

    /// `SMTP_URL` for the service.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Answers the next DATA commands with these codes (e.g. 451 deferred, 554 bounced).
    pub fn refuse_next(&self, codes: &[u16]) {
        lock(&self.state).refusals.extend(codes);
    }

    /// Messages accepted so far.
    pub fn accepted(&self) -> Vec<Mail> {
        lock(&self.state).accepted.clone()
    }

    /// Deliveries refused so far.
    pub fn refused(&self) -> u32 {
        lock(&self.state).refused
    }
}

async fn session(socket: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    macro_rules! say {
        ($($arg:tt)*) => {
            if write.write_all(format!("{}\r\n", format!($($arg)*)).as_bytes()).await.is_err() {
                return;
            }
        };
    }
    say!("220 fake.smtp.test ESMTP ready");
    let (mut from, mut to) = (String::new(), Vec::new());
    while let Ok(Some(line)) = lines.next_line().await {
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            say!("250-fake.smtp.test greets you");
            say!("250 8BITMIME");
        } else if upper.starts_with("MAIL FROM:") {
            from = line[10..].trim().trim_matches(['<', '>']).to_string();
            to.clear();
            say!("250 OK");
        } else if upper.starts_with("RCPT TO:") {
            to.push(line[8..].trim().trim_matches(['<', '>']).to_string());
            say!("250 OK");
        } else if upper == "DATA" {
            say!("354 end data with <CR><LF>.<CR><LF>");
            let mut data = String::new();
            while let Ok(Some(body)) = lines.next_line().await {
                if body == "." {
                    break;
                }
                // Dot-stuffing (RFC 5321 4.5.2).
                data.push_str(
                    body.strip_prefix('.')
                        .filter(|_| body.starts_with(".."))
                        .unwrap_or(&body),
                );
                data.push_str("\r\n");
            }
            let refusal = lock(&state).refusals.pop_front();
            match refusal {
                Some(code) => {
                    lock(&state).refused += 1;
                    say!("{code} refused by the fake");
                }
                None => {
                    lock(&state).accepted.push(Mail {
                        from: from.clone(),
                        to: to.clone(),
                        data: decode_qp(&data),
                    });
                    say!("250 OK queued");
                }
            }
        } else if upper == "QUIT" {
            say!("221 bye");
            return;
        } else if upper == "RSET" || upper == "NOOP" {
            say!("250 OK");
        } else {
            say!("502 command not implemented");
        }
    }
}
