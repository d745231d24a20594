//! What every API request passes before a handler sees it: a bound on the
//! size of its headers, a per-client rate limit, and the bearer token.
//!
//! Tokens come only from the environment or a secret file (see
//! [`jobs::config::api_tokens`]), never from the committed configuration.
//! Only their SHA-256 digests are kept, and a presented token is compared
//! with every digest in constant time ([`subtle`]), so neither the time a
//! refusal takes nor its message tells how close a guess was. Several
//! tokens may be valid at once, so that a new one can be rolled out before
//! the old one is withdrawn.
//!
//! The rate limit is a token bucket per client IP address ([`governor`]):
//! a client may send `burst` requests at once and `requests_per_second`
//! after that; past it the answer is 429 with `Retry-After`. Behind a
//! reverse proxy every client shares the proxy's address, so limit there
//! instead (see docs/security.md).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::ErrorBody;
use crate::config::{AuthConfig, RateLimitConfig};

/// Shortest token accepted: 16 characters of a random hex or base64 string
/// carry at least 64 bits, beyond any online guessing.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Clients tracked before the rate limiter forgets those whose buckets are
/// full again; bounds its memory under a flood from many addresses.
const MAX_TRACKED_CLIENTS: usize = 10_000;

/// Why the guard could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(
        "no API token: set {} (or {}, or http.auth.token_file to a file holding it), \
         or set http.auth.allow_unauthenticated = true for a local development stack",
        jobs::config::API_TOKEN_ENV,
        jobs::config::API_TOKEN_FILE_ENV
    )]
    NoToken,
    #[error(
        "API token number {index} has {chars} characters; use at least {MIN_TOKEN_CHARS} \
         (for example `openssl rand -hex 32`)"
    )]
    WeakToken { index: usize, chars: usize },
    #[error("http.rate_limit: requests_per_second and burst must both be at least 1 (or both 0 to turn the limit off)")]
    RateLimit,
}

/// The accepted bearer tokens, as SHA-256 digests.
pub struct ApiTokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiTokens({} redacted)", self.digests.len())
    }
}

impl ApiTokens {
    /// The digests of `tokens`, each at least [`MIN_TOKEN_CHARS`] long.
    pub fn new(tokens: &[String]) -> Result<Self, GuardError> {
        for (index, token) in tokens.iter().enumerate() {
            let chars = token.chars().count();
            if chars < MIN_TOKEN_CHARS {
                return Err(GuardError::WeakToken {
                    index: index + 1,
                    chars,
                });
            }
        }
        Ok(Self {
            digests: tokens.iter().map(|t| digest(t.as_bytes())).collect(),
        })
    }

    /// Whether `presented` is one of the tokens. Digests have one length
    /// whatever the token's, and every digest is compared, so the time
    /// taken depends on neither the token nor where a guess goes wrong.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        let mut found = subtle::Choice::from(0);
        for known in &self.digests {
            found |= known.ct_eq(&presented);
        }
        found.into()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Everything the guard needs, shared by every request.
pub struct Guard {
    /// `None` when the API runs without authentication (a dev setting).
    tokens: Option<ApiTokens>,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    rate: RateLimitConfig,
    /// Largest request body, for the 413 message.
    pub max_body_bytes: usize,
    /// Largest total of the request line's URI and all headers.
    pub max_header_bytes: usize,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("tokens", &self.tokens)
            .field("rate", &self.rate)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_header_bytes", &self.max_header_bytes)
            .finish()
    }
}

impl Guard {
    /// A guard accepting `tokens` (refused when empty unless `auth` allows
    /// running without), limiting each client to `rate`.
    pub fn new(
        tokens: &[String],
        auth: &AuthConfig,
        rate: &RateLimitConfig,
        max_body_bytes: usize,
        max_header_bytes: usize,
    ) -> Result<Self, GuardError> {
        let tokens = match (tokens.is_empty(), auth.allow_unauthenticated) {
            (true, false) => return Err(GuardError::NoToken),
            (true, true) => {
                tracing::warn!(
                    "the HTTP API accepts every request without a token \
                     (http.auth.allow_unauthenticated); never expose it like this"
                );
                None
            }
            (false, _) => Some(ApiTokens::new(tokens)?),
        };
        let limiter = match (
            NonZeroU32::new(rate.requests_per_second),
            NonZeroU32::new(rate.burst),
        ) {
            (Some(per_second), Some(burst)) => Some(RateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            )),
            (None, None) => None,
            _ => return Err(GuardError::RateLimit),
        };
        Ok(Self {
            tokens,
            limiter,
            rate: rate.clone(),
            max_body_bytes,
            max_header_bytes,
        })
    }
}

/// A JSON error answer, the same shape as every other API error.
pub fn refusal(status: StatusCode, error: String) -> Response {
    (status, Json(ErrorBody { error })).into_response()
}

/// Refuses requests whose URI and headers together exceed the limit with
/// 431. (hyper refuses heads past its own buffer, about 400 KiB, before
/// this runs.)
pub async fn limit_headers(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let size = request.uri().to_string().len()
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum::<usize>();
    if size > guard.max_header_bytes {
        return refusal(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request's URI and headers total {size} bytes; at most {} are accepted",
                guard.max_header_bytes
            ),
        );
    }
    next.run(request).await
}

/// The client's address: the TCP peer, as the server records it.
fn client_ip(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Answers 429 with `Retry-After` to a client past its rate.
pub async fn limit_rate(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let Some(limiter) = &guard.limiter else {
        return next.run(request).await;
    };
    let ip = client_ip(&request);
    if let Err(not_until) = limiter.check_key(&ip) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let retry_after = retry_after.max(1);
        tracing::warn!(client = %ip, retry_after, "rate limit reached");
        let mut response = refusal(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many requests from {ip}: at most {} per second after a burst of {}; \
                 retry in {retry_after} s",
                guard.rate.requests_per_second, guard.rate.burst
            ),
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after));
        return response;
    }
    if limiter.len() > MAX_TRACKED_CLIENTS {
        limiter.retain_recent();
    }
    next.run(request).await
}

/// Why a request's credentials were refused; the messages never echo what
/// was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unauthorized {
    Missing,
    Malformed,
    Wrong,
}

impl Unauthorized {
    fn response(self) -> Response {
        let (message, challenge) = match self {
            Unauthorized::Missing => (
                "missing bearer token: send `Authorization: Bearer <token>`",
                r#"Bearer realm="glowline""#,
            ),
            Unauthorized::Malformed => (
                "the Authorization header must be `Bearer <token>`",
                r#"Bearer realm="glowline", error="invalid_request""#,
            ),
            Unauthorized::Wrong => (
                "invalid bearer token",
                r#"Bearer realm="glowline", error="invalid_token""#,
            ),
        };
        let mut response = refusal(StatusCode::UNAUTHORIZED, message.to_owned());
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        response
    }
}

/// Checks the `Authorization: Bearer` header.
fn check_token(tokens: &ApiTokens, request: &Request) -> Result<(), Unauthorized> {
    let mut values = request.headers().get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(Unauthorized::Missing)?;
    if values.next().is_some() {
        return Err(Unauthorized::Malformed);
    }
    let value = value.as_bytes();
    // The scheme is case-insensitive (RFC 9110); the token is not.
    let token = match value.split_at_checked(7) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => token,
        _ => return Err(Unauthorized::Malformed),
    };
    if token.is_empty() {
        return Err(Unauthorized::Malformed);
    }
    if tokens.accepts(token) {
        Ok(())
    } else {
        Err(Unauthorized::Wrong)
    }
}

/// Answers 401 unless the request carries a valid bearer token.
pub async fn require_token(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(tokens) = &guard.tokens else {
        return next.run(request).await;
    };
    if let Err(refused) = check_token(tokens, &request) {
        tracing::warn!(client = %client_ip(&request), reason = ?refused, path = %request.uri().path(), "request refused");
        return refused.response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_compared_by_digest_and_any_of_them_is_accepted() {
        let tokens = ApiTokens::new(&[
            "0123456789abcdef-old".to_owned(),
            "fedcba9876543210-new".to_owned(),
        ])
        .unwrap();
        assert!(tokens.accepts(b"0123456789abcdef-old"));
        assert!(tokens.accepts(b"fedcba9876543210-new"));
        assert!(!tokens.accepts(b"0123456789abcdef-ol"));
        assert!(!tokens.accepts(b""));
        assert_eq!(format!("{tokens:?}"), "ApiTokens(2 redacted)");
    }

    #[test]
    fn short_tokens_and_half_set_rate_limits_are_refused() {
        let err = ApiTokens::new(&["short".to_owned()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "API token number 1 has 5 characters; use at least 16 (for example `openssl rand -hex 32`)"
        );
        let rate = RateLimitConfig {
            requests_per_second: 0,
            burst: 5,
        };
        let err = Guard::new(
            &["0123456789abcdef".to_owned()],
            &AuthConfig::default(),
            &rate,
            1,
            1,
        )
        .unwrap_err();
        assert!(matches!(err, GuardError::RateLimit));
    }

    #[test]
    fn no_token_is_refused_unless_explicitly_allowed() {
        let rate = RateLimitConfig::default();
        let err = Guard::new(&[], &AuthConfig::default(), &rate, 1, 1).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("no API token: set GLOWLINE_API_TOKEN"),
            "{err}"
        );
        let open = AuthConfig {
            allow_unauthenticated: true,
            ..AuthConfig::default()
        };
        assert!(Guard::new(&[], &open, &rate, 1, 1)
            .unwrap()
            .tokens
            .is_none());
    }
}
