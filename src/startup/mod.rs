//! Builds the application (database, migrations, listeners) and runs the gRPC server and the
//! HTTP sidecar side by side until shutdown.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use http::{HeaderName, HeaderValue, Method};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::connection_limits::GuardedListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_web::GrpcWebLayer;
use tower::ServiceBuilder;
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::{DefaultOnResponse, TraceLayer},
};

use crate::{
    account::Account,
    auth::{AuthInterceptor, JwtVerifier, TokenRequest, mint},
    billing::{Billing, EventProcessor, mpesa_poller, overage, reconciler},
    config::Config,
    domain::UserId,
    grpc::{
        account::AccountApi,
        billing::BillingApi,
        integrations::IntegrationsApi,
        proto::{
            FILE_DESCRIPTOR_SET, account::account_service_server::AccountServiceServer,
            billing::billing_service_server::BillingServiceServer,
            integrations::integrations_service_server::IntegrationsServiceServer,
        },
    },
    integrations::{
        Integrations, scheduler, sync_worker::SyncWorker, tokens::TokenKeeper,
        webhook_apply::WebhookWorker,
    },
    payments::sandbox::Sandbox,
    sidecar::{self, DASHBOARD_PATH, DashboardSettings, SidecarState},
    store::{self, Store},
    telemetry::request_span,
    vault::Vault,
};

mod billing;
mod integrations;

use billing::{build_billing, dunning_mailer, start_sandbox};
use integrations::{Integrated, build_integrations};

/// The user id of the development token printed at start-up.
pub const DEV_USER_ID: &str = "dev-user";

/// A built application: database migrated, both listeners bound (so port 0 works and the bound
/// ports are known before serving).
pub struct Application {
    config: Config,
    /// The development payments sandbox, when on.
    sandbox: Option<Arc<Sandbox>>,
    /// Browser origins allowed by CORS and as redirect targets.
    origins: Vec<String>,
    store: Arc<dyn Store>,
    billing: Arc<Billing>,
    integrations: Arc<Integrations>,
    account: Arc<Account>,
    worker: Arc<SyncWorker>,
    webhook_worker: Arc<WebhookWorker>,
    events: Arc<EventProcessor>,
    verifier: Arc<JwtVerifier>,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    metrics_listener: TcpListener,
    shutdown: CancellationToken,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // Install the metrics recorder before anything can record.
        crate::metrics::handle();
        // Every known series at zero from the first scrape (alerts see each from the start).
        crate::metrics_catalogue::register_at_zero();
        let grpc_listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on GRPC_ADDR {}", config.grpc_addr))?;
        let http_listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot listen on HTTP_ADDR {}", config.http_addr))?;
        let metrics_listener = TcpListener::bind(config.metrics_addr)
            .await
            .with_context(|| format!("cannot listen on METRICS_ADDR {}", config.metrics_addr))?;
        // Known once bound (port 0 in tests): the dashboard's own origins are allowed.
        let origins = config.browser_origins(http_listener.local_addr()?.port());
        let mut config = config;
        let sandbox = start_sandbox(&mut config, http_listener.local_addr()?)?;
        let store = connect_store(&config).await?;
        let billing = Arc::new(build_billing(&config, &origins, Arc::clone(&store))?);
        let Integrated {
            integrations,
            vault,
            providers,
            oauth,
            webhook_arrivals,
        } = build_integrations(&config, &origins, Arc::clone(&store))?;
        let account = Arc::new(Account::new(
            Arc::clone(&store),
            Arc::clone(&billing),
            Arc::clone(&integrations),
        ));
        let tokens = Arc::new(TokenKeeper::new(Arc::clone(&store), vault, oauth));
        let webhook_worker = Arc::new(WebhookWorker::new(
            Arc::clone(&store),
            Arc::clone(&billing),
            Arc::clone(&tokens),
            Arc::clone(&providers),
            config.real_time.clone(),
            webhook_arrivals,
            config.sync.scheduler_interval,
        ));
        let worker = Arc::new(SyncWorker::new(
            Arc::clone(&store),
            Arc::clone(&billing),
            tokens,
            providers,
            config.sync.clone(),
        ));
        let events = Arc::new(EventProcessor::new(
            Arc::clone(&billing),
            config.webhooks.clone(),
        ));
        let verifier = Arc::new(JwtVerifier::new(&config.jwt)?);
        Ok(Self {
            config,
            sandbox,
            origins,
            store,
            billing,
            integrations,
            account,
            worker,
            webhook_worker,
            events,
            verifier,
            grpc_listener,
            http_listener,
            metrics_listener,
            shutdown: CancellationToken::new(),
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .unwrap_or(self.config.grpc_addr)
    }

    /// Where a browser finds the dashboard.
    pub fn dashboard_url(&self) -> String {
        dashboard_url(&self.config, self.http_addr())
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener
            .local_addr()
            .unwrap_or(self.config.http_addr)
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .unwrap_or(self.config.metrics_addr)
    }

    /// Cancel this token to stop the application gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// A 24-hour token for [`DEV_USER_ID`] when the JWT secret was generated for this process.
    pub fn dev_token(&self) -> Option<String> {
        if !self.config.jwt.generated {
            return None;
        }
        let user = UserId::parse(DEV_USER_ID).ok()?;
        mint(
            &self.config.jwt,
            &TokenRequest {
                user_id: &user,
                email: Some("dev@example.com"),
                roles: &[],
                ttl: Duration::from_secs(24 * 3600),
            },
        )
        .ok()
    }

    /// Serves until the shutdown token is cancelled: stops accepting, finishes in-flight
    /// requests and sync batches (their jobs go back to the queue), closes the database pool.
    /// Dropping the future instead stops everything at once, as a crash would.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            config,
            sandbox,
            origins,
            store,
            billing,
            integrations,
            account,
            worker,
            webhook_worker,
            events,
            verifier,
            grpc_listener,
            http_listener,
            metrics_listener,
            shutdown,
        } = self;

        if config.stripe.is_none() && config.paypal.is_none() && config.mpesa.is_none() {
            tracing::warn!(
                "payments are not configured (STRIPE_SECRET_KEY, PAYPAL_CLIENT_ID and MPESA_CONSUMER_KEY are unset): payment RPCs answer FAILED_PRECONDITION"
            );
        }
        if config.encryption_key_generated {
            tracing::warn!(
                data_dir = %config.data_dir.display(),
                "ENCRYPTION_KEY is unset: using a development key kept in DATA_DIR/encryption.key"
            );
        }
        if config.jwt.generated {
            tracing::warn!(
                "JWT_SECRET is unset: tokens are signed with a random secret for this process only"
            );
        }

        let reconcile_loop = {
            let billing = Arc::clone(&billing);
            let shutdown = shutdown.clone();
            let interval = config.webhooks.reconcile_interval;
            async move {
                if let Some(interval) = interval {
                    reconciler::run(billing, interval, shutdown).await;
                }
            }
        };
        let mpesa_loop = match &config.mpesa {
            Some(mpesa) => futures_util::future::Either::Left(mpesa_poller::run(
                Arc::clone(&billing),
                mpesa.poll_interval,
                mpesa.callback_grace,
                shutdown.clone(),
            )),
            None => futures_util::future::Either::Right(std::future::ready(())),
        };
        let dunning_loop =
            match dunning_mailer(&config, Arc::clone(&store), http_listener.local_addr()?)? {
                Some(mailer) => {
                    let shutdown = shutdown.clone();
                    futures_util::future::Either::Left(async move { mailer.run(shutdown).await })
                }
                None => futures_util::future::Either::Right(std::future::ready(())),
            };
        let overage_loop = {
            let billing = Arc::clone(&billing);
            let shutdown = shutdown.clone();
            let interval = config.selling.overage_report_interval;
            let sold = config
                .stripe
                .as_ref()
                .is_some_and(|s| s.price_extra_card.is_some());
            async move {
                if sold {
                    overage::run(billing, interval, shutdown).await;
                }
            }
        };
        let scheduler_loop = scheduler::run(
            Arc::clone(&store),
            scheduler::SchedulerConfig {
                tick: config.sync.scheduler_interval,
                max_attempts: config.sync.max_attempts,
                retention: chrono::Duration::days(i64::from(config.sync.retention_days)),
            },
            shutdown.clone(),
        );
        let sidecar_state = Arc::new(SidecarState {
            store: Arc::clone(&store),
            billing: Arc::clone(&billing),
            integrations: Arc::clone(&integrations),
            webhook_max_body_bytes: config.webhook_max_body_bytes,
            secure_cookies: config.oauth.redirect_url.scheme() == "https",
            dashboard: DashboardSettings {
                grpc_web_url: config.dashboard_grpc_url.as_ref().map(|u| u.to_string()),
                grpc_port: grpc_listener.local_addr()?.port(),
                development: config.jwt.generated,
                sandbox: sandbox.is_some(),
            },
            verifier: Arc::clone(&verifier),
            sandbox,
        });
        let (grpc_addr, http_addr) = (grpc_listener.local_addr()?, http_listener.local_addr()?);
        let metrics_addr = metrics_listener.local_addr()?;
        let grpc = grpc_server(
            origins,
            integrations,
            billing,
            account,
            verifier,
            GuardedListener::new(grpc_listener, config.grpc_connections, "grpc"),
            shutdown.clone(),
        );
        let http = sidecar::serve(
            GuardedListener::new(http_listener, config.http_connections, "http"),
            sidecar_state,
            shutdown.clone(),
        );
        tracing::info!(
            %grpc_addr,
            %http_addr,
            %metrics_addr,
            dashboard = %dashboard_url(&config, http_addr),
            "serving"
        );

        let grpc = tokio::spawn(grpc);
        let http = tokio::spawn(http);
        tokio::spawn(sidecar::serve_metrics(metrics_listener, shutdown.clone()));
        // Not spawned: dropping this future (a crash in tests) must stop the workers too.
        let workers = async {
            tokio::join!(
                worker.run(shutdown.clone()),
                webhook_worker.run(shutdown.clone()),
                events.run(shutdown.clone()),
                reconcile_loop,
                scheduler_loop,
                mpesa_loop,
                dunning_loop,
                overage_loop
            );
        };
        let (grpc_result, http_result, ()) = tokio::join!(
            async {
                let r = grpc.await;
                // If the gRPC server stops on its own, stop the sidecar too.
                shutdown.cancel();
                r
            },
            http,
            workers
        );
        store.close().await;
        http_result.context("HTTP sidecar task failed")?;
        grpc_result.context("gRPC server task failed")??;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The dashboard's URL: on the public origin (OAUTH_REDIRECT_URL's) unless that names this
/// machine on another port than the bound one (a development default), then on the bound port.
fn dashboard_url(config: &Config, http_addr: SocketAddr) -> String {
    let public = &config.oauth.redirect_url;
    let names_this_machine = matches!(public.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if !names_this_machine || public.port_or_known_default() == Some(http_addr.port()) {
        return format!("{}{DASHBOARD_PATH}", public.origin().ascii_serialization());
    }
    let host = if http_addr.ip().is_unspecified() || http_addr.ip().is_loopback() {
        "localhost".to_string()
    } else {
        http_addr.ip().to_string()
    };
    format!("http://{host}:{}{DASHBOARD_PATH}", http_addr.port())
}

/// The billing use cases on their own (for one-off commands such as `reconcile`).
pub async fn build_billing_only(config: &Config) -> anyhow::Result<(Billing, Arc<dyn Store>)> {
    let store = connect_store(config).await?;
    let origins = config.browser_origins(config.http_addr.port());
    Ok((build_billing(config, &origins, Arc::clone(&store))?, store))
}

/// The data-rights use cases on their own (for the operator commands `user ...`).
pub async fn build_account_only(config: &Config) -> anyhow::Result<(Arc<Account>, Arc<dyn Store>)> {
    let store = connect_store(config).await?;
    let origins = config.browser_origins(config.http_addr.port());
    let billing = Arc::new(build_billing(config, &origins, Arc::clone(&store))?);
    let integrations = build_integrations(config, &origins, Arc::clone(&store))?.integrations;
    let account = Arc::new(Account::new(Arc::clone(&store), billing, integrations));
    Ok((account, store))
}

/// The configured database, migrated.
async fn connect_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let store = store::connect(
        config.database_url.expose_secret(),
        config.database_max_connections,
    )
    .await
    .context("cannot connect to the database (DATABASE_URL)")?;
    store
        .migrate()
        .await
        .context("cannot apply database migrations")?;
    Ok(store)
}

/// The vault with the current key and any previous ones.
pub fn build_vault(config: &Config) -> anyhow::Result<Vault> {
    let previous: Vec<&[u8; 32]> = config
        .previous_encryption_keys
        .iter()
        .map(|k| k.expose())
        .collect();
    Vault::new(config.encryption_key.expose(), &previous).context("cannot set up the vault")
}

async fn grpc_server(
    allowed_origins: Vec<String>,
    integrations: Arc<Integrations>,
    billing: Arc<Billing>,
    account: Arc<Account>,
    verifier: Arc<JwtVerifier>,
    listener: GuardedListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<BillingServiceServer<BillingApi>>()
        .await;
    health
        .set_serving::<IntegrationsServiceServer<IntegrationsApi>>()
        .await;
    health
        .set_serving::<AccountServiceServer<AccountApi>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let auth = AuthInterceptor::new(verifier);
    let billing = BillingServiceServer::with_interceptor(BillingApi::new(billing), auth.clone());
    let integrations = IntegrationsServiceServer::with_interceptor(
        IntegrationsApi::new(integrations, shutdown.clone()),
        auth.clone(),
    );
    let account =
        AccountServiceServer::with_interceptor(AccountApi::new(account, shutdown.clone()), auth);

    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(
            TraceLayer::new_for_grpc()
                .make_span_with(|request: &http::Request<_>| request_span(request))
                .on_request(())
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO))
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(crate::metrics::GrpcMetricsLayer)
        .layer(cors_layer(&allowed_origins))
        .layer(GrpcWebLayer::new());

    Server::builder()
        .accept_http1(true)
        // Dead or silent peers are found by pings; a slow or idle new connection is closed by
        // the listener's guard (see connection_limits).
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(layers)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(billing)
        .add_service(integrations)
        .add_service(account)
        .serve_with_incoming_shutdown(listener.into_stream(), async move {
            shutdown.cancelled().await;
            health
                .set_not_serving::<BillingServiceServer<BillingApi>>()
                .await;
            health
                .set_not_serving::<IntegrationsServiceServer<IntegrationsApi>>()
                .await;
            health
                .set_not_serving::<AccountServiceServer<AccountApi>>()
                .await;
            tracing::info!("shutting down: finishing in-flight requests");
        })
        .await?;
    Ok(())
}

/// CORS for grpc-web: only the configured origins, only POST, only the headers grpc-web sends.
fn cors_layer(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::POST])
        .allow_headers([
            HeaderName::from_static("authorization"),
            HeaderName::from_static("content-type"),
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
            HeaderName::from_static("x-request-id"),
        ])
        .max_age(Duration::from_secs(24 * 3600))
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
