//! Bearer-token authentication. The algorithm and key come from configuration only; the token's
//! own header is never trusted to choose them (so no `alg: none`, no HS/RS confusion).

use std::{sync::Arc, time::Duration};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tonic::{Request, Status, service::Interceptor};

use crate::{
    config::{JwtAlgorithm, JwtConfig, JwtKey},
    domain::UserId,
};

/// The role that marks an internal service caller.
pub const SERVICE_ROLE: &str = "service";

/// The claims this service reads and mints.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// One audience, or several (RFC 7519 allows both); jsonwebtoken checks the configured
    /// one is among them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// The `aud` claim: a string or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Who is calling, from a verified token. Handlers find it in the request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: UserId,
    pub email: Option<String>,
    pub is_service: bool,
}

impl Caller {
    /// The user a request acts on: the caller, unless a service caller names another user.
    pub fn acting_on(&self, requested: &str) -> Result<UserId, Status> {
        if requested.is_empty() || requested == self.user_id.as_str() {
            return Ok(self.user_id.clone());
        }
        if !self.is_service {
            return Err(Status::permission_denied(
                "only service callers may act on another user",
            ));
        }
        UserId::parse(requested).map_err(|e| Status::invalid_argument(format!("user_id: {e}")))
    }
}

/// Why a token was refused. Callers only ever see a generic message.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("invalid subject: {0}")]
    Subject(#[from] crate::domain::user::UserIdError),
}

/// Verifies bearer tokens against the configured key, algorithm, issuer and audience.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

/// The verifier could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
#[error("JWT_PUBLIC_KEY is not a valid PEM key for the configured algorithm: {0}")]
pub struct KeyError(#[from] jsonwebtoken::errors::Error);

fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Es256 => Algorithm::ES256,
    }
}

impl JwtVerifier {
    pub fn new(config: &JwtConfig) -> Result<Self, KeyError> {
        let key = match (&config.key, config.algorithm) {
            (JwtKey::Hmac(secret), _) => {
                DecodingKey::from_secret(secret.expose_secret().as_bytes())
            }
            (JwtKey::PublicPem(pem), JwtAlgorithm::Es256) => {
                DecodingKey::from_ec_pem(pem.as_bytes())?
            }
            (JwtKey::PublicPem(pem), _) => DecodingKey::from_rsa_pem(pem.as_bytes())?,
        };
        let mut validation = Validation::new(algorithm(config.algorithm));
        validation.leeway = config.leeway.as_secs();
        // A token that says it is not valid yet is refused (jsonwebtoken skips `nbf` unless
        // told to check it).
        validation.validate_nbf = true;
        // A configured issuer or audience must also be present: jsonwebtoken only compares
        // the claims it is told are required.
        let mut required = vec!["exp", "sub"];
        match &config.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Self { key, validation })
    }

    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)?;
        let claims = data.claims;
        Ok(Caller {
            user_id: UserId::parse(claims.sub)?,
            email: claims.email,
            is_service: claims.roles.iter().any(|r| r == SERVICE_ROLE),
        })
    }

    /// Verifies the `authorization: Bearer <token>` value of a request.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Caller, AuthError> {
        let token = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        self.verify(token)
    }
}

/// The tonic interceptor in front of both services: puts the [`Caller`] in the request
/// extensions, or answers UNAUTHENTICATED with a short, generic message.
#[derive(Clone)]
pub struct AuthInterceptor {
    verifier: Arc<JwtVerifier>,
}

impl AuthInterceptor {
    pub fn new(verifier: Arc<JwtVerifier>) -> Self {
        Self { verifier }
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match self.verifier.verify_header(header) {
            Ok(caller) => {
                tracing::Span::current().record("user_id", caller.user_id.as_str());
                request.extensions_mut().insert(caller);
                Ok(request)
            }
            Err(AuthError::Missing) => Err(Status::unauthenticated("missing bearer token")),
            Err(e) => {
                tracing::info!(reason = %e, "token refused");
                Err(Status::unauthenticated("invalid or expired token"))
            }
        }
    }
}

/// What `token` mints and the start-up banner prints.
pub struct TokenRequest<'a> {
    pub user_id: &'a UserId,
    pub email: Option<&'a str>,
    pub roles: &'a [String],
    pub ttl: Duration,
}

/// Mints an HS256 token with the configured secret, issuer and audience (for development and scripts).
pub fn mint(config: &JwtConfig, request: &TokenRequest<'_>) -> Result<String, String> {
    let JwtKey::Hmac(secret) = &config.key else {
        return Err("tokens can only be minted with HS256 (JWT_SECRET); \
                    RS256/ES256 tokens come from your identity provider"
            .into());
    };
    let now = chrono::Utc::now().timestamp().max(0).cast_unsigned();
    let claims = Claims {
        sub: request.user_id.to_string(),
        email: request.email.map(str::to_string),
        roles: request.roles.to_vec(),
        exp: now + request.ttl.as_secs(),
        iat: Some(now),
        iss: config.issuer.clone(),
        aud: config.audience.clone().map(Audience::One),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    )
    .map_err(|e| format!("cannot sign token: {e}"))
}
